"""Module identities: module twin (reported) and module direct methods, Python SDKs on both sides."""

from azure.iot.hub.protocol.models import CloudToDeviceMethod

from harness import create_sas_device, device_connection_string, unique_id


def test_module_twin_and_module_method(hub, registry, apps):
    device_id = unique_id("edge")
    module_id = "telemetry-filter"
    create_sas_device(registry, device_id)
    created = registry.create_module_with_sas(device_id, module_id, "", None, None)
    assert created.module_id == module_id
    module = registry.get_module(device_id, module_id)
    assert module.device_id == device_id and module.module_id == module_id
    keys = module.authentication.symmetric_key
    assert keys.primary_key and keys.secondary_key, f"hub generated no module keys: {module.as_dict()}"

    app = apps.python_device(
        "module",
        device_connection_string(device_id, keys.primary_key, module_id=module_id),
        "--module",
        "--methods",
        "echo",
    )
    app.expect("ready", 60)

    patch = {"moduleState": "running", "filter": {"threshold": 21.5}}
    app.request({"cmd": "report", "patch": patch}, 15)

    module_twin = registry.get_module_twin(device_id, module_id)
    assert module_twin.device_id == device_id
    assert module_twin.module_id == module_id
    reported = module_twin.properties.reported
    assert reported["moduleState"] == "running"
    assert reported["filter"] == {"threshold": 21.5}
    assert "$version" in reported and "$metadata" in reported

    # the module's reported properties are its own, not the device's
    device_reported = registry.get_twin(device_id).properties.reported
    assert "moduleState" not in device_reported

    device_side = app.request({"cmd": "get_twin"}, 15)["twin"]
    assert device_side["reported"]["moduleState"] == "running"

    result = registry.invoke_device_module_method(
        device_id,
        module_id,
        CloudToDeviceMethod(method_name="setThreshold", payload={"threshold": 30}, response_timeout_in_seconds=30),
    )
    assert result.status == 200
    assert result.payload == {"method": "setThreshold", "payload": {"threshold": 30}}
    request = app.expect("method", 5)
    assert request["name"] == "setThreshold"
    assert request["payload"] == {"threshold": 30}
