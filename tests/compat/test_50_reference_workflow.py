"""The reference workflow of DESIGN.md, end to end with the official SDKs.

The device reports standBy, answers `firmwareUpdate` at once and then reports downloading,
applying and completed in the background; the service invokes the method and polls the twin.
"""

from azure.iot.hub.protocol.models import CloudToDeviceMethod

from harness import create_sas_device, unique_id
from workflow import (
    FW_PACKAGE_URI,
    METHOD_RESPONSE,
    check_final_reported,
    poll_until_completed,
)


def _reports(app):
    return [e["patch"] for e in app.events_named("reported")]


def _python_workflow(registry, apps, transport_flags):
    device_id = unique_id("fw")
    _, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device(
        "device", connection_string, "--methods", "firmware", "--report-standby", *transport_flags
    )
    app.expect("ready", 60)
    standby = app.expect("reported", 1)["patch"]

    before = registry.get_twin(device_id).properties.reported
    assert before["firmwareStatus"] == "standBy", before
    assert before["logTime"] == standby["logTime"]
    standby_version = before["$version"]

    result = registry.invoke_device_method(
        device_id,
        CloudToDeviceMethod(
            method_name="firmwareUpdate", payload={"fwPackageUri": FW_PACKAGE_URI}, response_timeout_in_seconds=60
        ),
    )
    assert result.status == 200
    assert result.payload == METHOD_RESPONSE

    request = app.expect("method", 5)
    assert request["name"] == "firmwareUpdate"
    assert request["payload"] == {"fwPackageUri": FW_PACKAGE_URI}

    final, seen = poll_until_completed(lambda: registry.get_twin(device_id).properties.reported)
    app.expect("firmware_done", 10)
    check_final_reported(final, _reports(app), standby_version)
    return seen


def test_reference_workflow_python_mqtt_tls(hub, registry, apps):
    _python_workflow(registry, apps, [])


def test_reference_workflow_python_mqtt_websockets(hub, registry, apps):
    _python_workflow(registry, apps, ["--websockets"])


def test_reference_workflow_node(hub, registry, apps):
    device_id = unique_id("fw-node")
    _, connection_string = create_sas_device(registry, device_id)
    device = apps.node("node-device", "firmware_device.js", connection_string)
    device.expect("ready", 60)
    device.expect("reported", 1)

    service = apps.node("node-service", "firmware_service.js", hub.owner_connection_string, device_id, FW_PACKAGE_URI)
    result = service.expect("result", 90)
    assert service.wait_exit(15) == 0, service.output()
    assert result["method"] == {"status": 200, "payload": METHOD_RESPONSE}
    assert result["seen"][-1] == "completed"

    request = device.expect("method", 5)
    assert request["name"] == "firmwareUpdate"
    assert request["payload"] == {"fwPackageUri": FW_PACKAGE_URI}
    device.expect("firmware_done", 10)

    # what the Node service saw is what the Python service sees
    final = registry.get_twin(device_id).properties.reported
    assert result["final"] == final
    check_final_reported(final, _reports(device), result["standbyVersion"])
