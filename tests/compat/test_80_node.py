"""The Node SDKs (azure-iot-device + azure-iot-device-mqtt, azure-iothub) beyond the reference workflow."""

import base64
import os

import pytest
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, device_connection_string, unique_id


def test_node_device_wrong_key_is_refused(hub, registry, apps):
    device_id = unique_id("node-wrongkey")
    _, good_connection_string = create_sas_device(registry, device_id)

    wrong_key = base64.b64encode(os.urandom(32)).decode()
    refused = apps.node("node-wrong-key", "device_connect.js", device_connection_string(device_id, wrong_key))
    failure = refused.expect("connect_failed", 60)
    assert failure["error"] == "UnauthorizedError", failure
    assert refused.wait_exit(10) == 0

    accepted = apps.node("node-right-key", "device_connect.js", good_connection_string)
    accepted.expect("ready", 60)


def test_node_registry_create_get_delete(hub, registry, apps):
    device_id = unique_id("node-crud")
    app = apps.node("node-registry", "registry_crud.js", hub.owner_connection_string, device_id)
    created = app.expect("created", 60)["device"]

    # what Node created is what the Python service SDK reads
    device = registry.get_device(device_id)
    assert device.status == "enabled"
    assert device.authentication.symmetric_key.primary_key == created["primaryKey"]
    assert device.authentication.symmetric_key.secondary_key == created["secondaryKey"]

    app.request({"cmd": "delete"}, 30)
    app.close()
    assert app.process.returncode == 0, app.output()

    with pytest.raises(HttpOperationError) as raised:
        registry.get_device(device_id)
    assert raised.value.response.status_code == 404
