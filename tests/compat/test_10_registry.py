"""Registry through the official Python service SDK (azure-iot-hub): create, read back, conflicts."""

import pytest
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, unique_id


def test_create_existing_device_is_409_and_leaves_it_unchanged(hub, registry):
    device_id = unique_id("dup")
    created = registry.create_device_with_sas(device_id, None, None, "enabled")
    assert created.device_id == device_id
    assert created.status == "enabled"
    before = registry.get_device(device_id)
    assert before.authentication.type == "sas"
    assert before.authentication.symmetric_key.primary_key, "hub did not generate a primary key"

    with pytest.raises(HttpOperationError) as raised:
        registry.create_device_with_sas(device_id, None, None, "disabled")
    assert raised.value.response.status_code == 409, raised.value.response.text

    after = registry.get_device(device_id)
    assert after.status == "enabled", "a refused create must not change the device"
    assert after.etag == before.etag
    assert after.authentication.symmetric_key.primary_key == before.authentication.symmetric_key.primary_key
    assert after.authentication.symmetric_key.secondary_key == before.authentication.symmetric_key.secondary_key


def test_generated_keys_differ_per_device(hub, registry):
    first, _ = create_sas_device(registry, unique_id("keys"))
    second, _ = create_sas_device(registry, unique_id("keys"))
    assert first.authentication.symmetric_key.primary_key != second.authentication.symmetric_key.primary_key
