"""Twins: desired patches service -> device and optimistic concurrency on update_twin."""

import pytest
from azure.iot.hub.protocol.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, unique_id


def _is_pushed_patch_with(key):
    # With a desired-patch handler the SDK may, after a (re)connect, deliver the whole desired
    # section as if it were a patch; that copy carries "$metadata", a pushed patch does not.
    return lambda e: key in e["patch"] and "$metadata" not in e["patch"]


def test_desired_patch_round_trip(hub, registry, apps):
    device_id = unique_id("desired")
    _, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device("device", connection_string, "--desired")
    app.expect("ready", 60)

    twin = registry.get_twin(device_id)
    version_before = twin.properties.desired["$version"]
    updated = registry.update_twin(
        device_id,
        Twin(properties=TwinProperties(desired={"targetFirmware": "1.2.3", "config": {"interval": 30}})),
        twin.etag,
    )
    desired = updated.properties.desired
    assert desired["targetFirmware"] == "1.2.3"
    assert desired["config"] == {"interval": 30}
    assert desired["$version"] == version_before + 1
    assert updated.etag != twin.etag

    pushed = app.expect("desired_patch", 15, match=_is_pushed_patch_with("targetFirmware"))["patch"]
    assert pushed["$version"] == desired["$version"], pushed
    assert pushed["targetFirmware"] == "1.2.3"
    assert pushed["config"] == {"interval": 30}

    seen = app.request({"cmd": "get_twin"}, 15)["twin"]
    assert set(seen) == {"desired", "reported"}, "the device-side twin is the properties document only"
    assert seen["desired"]["targetFirmware"] == "1.2.3"
    assert seen["desired"]["config"] == {"interval": 30}
    assert seen["desired"]["$version"] == desired["$version"]
    metadata = seen["desired"]["$metadata"]
    assert "$lastUpdated" in metadata
    assert "$lastUpdated" in metadata["targetFirmware"]
    assert metadata["targetFirmware"]["$lastUpdatedVersion"] == desired["$version"]
    assert "$version" in seen["reported"]

    # null deletes (JSON merge patch), and the deletion is pushed as a null
    removed = registry.update_twin(device_id, Twin(properties=TwinProperties(desired={"config": None})))
    assert "config" not in removed.properties.desired
    assert removed.properties.desired["targetFirmware"] == "1.2.3"
    assert removed.properties.desired["$version"] == desired["$version"] + 1
    pushed = app.expect("desired_patch", 15, match=_is_pushed_patch_with("config"))["patch"]
    assert pushed["config"] is None
    assert pushed["$version"] == removed.properties.desired["$version"]
    seen = app.request({"cmd": "get_twin"}, 15)["twin"]
    assert "config" not in seen["desired"]
    assert seen["desired"]["targetFirmware"] == "1.2.3"


def test_update_twin_with_stale_etag_is_412(hub, registry):
    device_id = unique_id("etag")
    create_sas_device(registry, device_id)
    original = registry.get_twin(device_id)
    assert original.etag

    first = registry.update_twin(device_id, Twin(tags={"site": "a"}), original.etag)
    assert first.tags["site"] == "a"
    assert first.etag != original.etag

    with pytest.raises(HttpOperationError) as raised:
        registry.update_twin(device_id, Twin(tags={"site": "b"}), original.etag)
    assert raised.value.response.status_code == 412, raised.value.response.text

    current = registry.get_twin(device_id)
    assert current.tags["site"] == "a", "a refused update must not be applied"
    assert current.etag == first.etag

    # no etag means If-Match: "*", which always applies
    forced = registry.update_twin(device_id, Twin(tags={"site": "c"}))
    assert forced.tags["site"] == "c"
