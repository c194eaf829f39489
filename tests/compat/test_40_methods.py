"""Direct-method errors through the official Python service SDK: offline (404) and timeout (504)."""

import json
import time

import pytest
from azure.iot.hub.protocol.models import CloudToDeviceMethod
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, unique_id


def _error_body(response):
    """The numeric error body of a direct-method failure. Azure nests it as JSON text inside the registry
    envelope's `Message` ({"Message": "{\"errorCode\":404103,...}", "ExceptionMessage": ""}), which is
    what the C# and Java service SDKs parse (docs/azure-errors.md)."""
    try:
        outer = response.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {response.text!r}")
    assert set(outer) >= {"Message", "ExceptionMessage"}, f"not Azure's envelope: {response.text!r}"
    try:
        return json.loads(outer["Message"])
    except ValueError:
        raise AssertionError(f"Message does not hold the numeric body: {response.text!r}")


def test_method_to_offline_device_is_404_device_not_online(hub, registry):
    device_id = unique_id("offline")
    create_sas_device(registry, device_id)  # registered, never connected

    started = time.monotonic()
    with pytest.raises(HttpOperationError) as raised:
        registry.invoke_device_method(
            device_id,
            CloudToDeviceMethod(
                method_name="firmwareUpdate",
                payload={"fwPackageUri": "https://example.invalid/fw.bin"},
                response_timeout_in_seconds=10,
                connect_timeout_in_seconds=0,
            ),
        )
    elapsed = time.monotonic() - started
    response = raised.value.response
    assert response.status_code == 404, response.text
    assert elapsed < 5, f"connect timeout 0 must fail at once, took {elapsed:.1f} s"
    assert response.headers.get("iothub-errorcode") == "DeviceNotOnline", dict(response.headers)
    assert _error_body(response).get("errorCode") == 404103, response.text

    # a device that does not exist at all is a 404 too, with another error code
    with pytest.raises(HttpOperationError) as raised:
        registry.invoke_device_method(
            unique_id("nosuchdevice"),
            CloudToDeviceMethod(method_name="ping", payload={}, response_timeout_in_seconds=5, connect_timeout_in_seconds=0),
        )
    response = raised.value.response
    assert response.status_code == 404, response.text
    assert response.headers.get("iothub-errorcode") == "DeviceNotFound", dict(response.headers)


def test_method_to_silent_device_is_504_after_response_timeout(hub, registry, apps):
    device_id = unique_id("silent")
    _, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device("device", connection_string, "--methods", "silent")
    app.expect("ready", 60)

    started = time.monotonic()
    with pytest.raises(HttpOperationError) as raised:
        registry.invoke_device_method(
            device_id,
            CloudToDeviceMethod(
                method_name="firmwareUpdate",
                payload={"fwPackageUri": "https://example.invalid/fw.bin"},
                response_timeout_in_seconds=5,
                connect_timeout_in_seconds=0,
            ),
        )
    elapsed = time.monotonic() - started
    response = raised.value.response
    assert response.status_code == 504, response.text
    assert 4.5 <= elapsed < 20, f"expected the 5 s response timeout, took {elapsed:.1f} s"
    assert _error_body(response).get("errorCode") == 504101, response.text

    request = app.expect("method", 5, what="(the request must have reached the device)")
    assert request["name"] == "firmwareUpdate"
    assert request["payload"] == {"fwPackageUri": "https://example.invalid/fw.bin"}
