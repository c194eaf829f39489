"""Reconnect after a hub crash (SIGKILL) and restart, without the device re-subscribing.

The Python device SDK connects with clean_session=0 and never repeats its SUBSCRIBEs after a
reconnect (azure/iot/device/common/mqtt_transport.py), so methods and desired patches only keep
flowing if the hub kept the session's subscriptions, across a restart too.
"""

import pytest
from azure.iot.hub.protocol.models import CloudToDeviceMethod, Twin, TwinProperties

from harness import create_sas_device, unique_id

# The SDK retries 0.01 s after the drop (the hub is down then) and every 10 s after that.
RECONNECT_TIMEOUT = 40


def _ping(registry, device_id, n):
    return registry.invoke_device_method(
        device_id,
        CloudToDeviceMethod(
            method_name="ping", payload={"n": n}, response_timeout_in_seconds=20, connect_timeout_in_seconds=10
        ),
    )


@pytest.mark.case_timeout(180)
def test_device_survives_hub_kill_and_restart_without_resubscribing(hub, registry, apps):
    device_id = unique_id("survivor")
    _, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device("device", connection_string, "--methods", "echo", "--desired")
    app.expect("ready", 60)
    # consume the first connect's state event, so that only the reconnect's counts below
    app.expect("connection_state", 10, match=lambda e: e["connected"] is True)

    before = _ping(registry, device_id, 1)
    assert (before.status, before.payload) == (200, {"method": "ping", "payload": {"n": 1}})
    app.expect("method", 5, match=lambda e: e["payload"] == {"n": 1})

    hub.kill()
    app.expect("connection_state", 15, match=lambda e: e["connected"] is False, what="(drop after SIGKILL)")
    hub.restart()
    app.expect(
        "connection_state", RECONNECT_TIMEOUT, match=lambda e: e["connected"] is True, what="(SDK reconnect)"
    )

    after = _ping(registry, device_id, 2)
    assert (after.status, after.payload) == (200, {"method": "ping", "payload": {"n": 2}})
    app.expect("method", 5, match=lambda e: e["payload"] == {"n": 2})

    twin = registry.update_twin(device_id, Twin(properties=TwinProperties(desired={"afterRestart": 1})))
    version = twin.properties.desired["$version"]
    # a pushed patch, not the SDK's whole-desired refresh after reconnect (which carries $metadata)
    pushed = app.expect(
        "desired_patch",
        15,
        match=lambda e: "afterRestart" in e["patch"] and "$metadata" not in e["patch"],
        what="(desired patch after restart)",
    )["patch"]
    assert pushed["afterRestart"] == 1
    assert pushed["$version"] == version
