"""Device authentication with the official Python device SDK: wrong keys and disabled devices."""

import base64
import os

from harness import create_sas_device, device_connection_string, unique_id

CONNECT_TIMEOUT = 60


def test_wrong_key_is_refused_with_credential_error(hub, registry, apps):
    device_id = unique_id("wrongkey")
    _, good_connection_string = create_sas_device(registry, device_id)
    other, _ = create_sas_device(registry, unique_id("other"))

    random_key = base64.b64encode(os.urandom(32)).decode()
    refused = apps.python_device("random-key", device_connection_string(device_id, random_key))
    failure = refused.expect("connect_failed", CONNECT_TIMEOUT)
    assert failure["error"] == "CredentialError", failure

    # a valid key, but another device's: the hub must check the key against *this* device
    borrowed = apps.python_device(
        "borrowed-key", device_connection_string(device_id, other.authentication.symmetric_key.primary_key)
    )
    failure = borrowed.expect("connect_failed", CONNECT_TIMEOUT)
    assert failure["error"] == "CredentialError", failure

    # and the right key still works after the refusals
    accepted = apps.python_device("right-key", good_connection_string)
    accepted.expect("ready", CONNECT_TIMEOUT)


def _set_status(registry, device, status):
    keys = device.authentication.symmetric_key
    updated = registry.update_device_with_sas(
        device.device_id, device.etag, keys.primary_key, keys.secondary_key, status
    )
    assert updated.status == status
    assert registry.get_device(device.device_id).status == status
    return updated


def test_disabled_device_cannot_connect(hub, registry, apps):
    device, connection_string = create_sas_device(registry, unique_id("disabled"))
    device = _set_status(registry, device, "disabled")

    refused = apps.python_device("while-disabled", connection_string)
    failure = refused.expect("connect_failed", CONNECT_TIMEOUT)
    assert failure["error"] == "CredentialError", failure

    _set_status(registry, device, "enabled")
    accepted = apps.python_device("re-enabled", connection_string)
    accepted.expect("ready", CONNECT_TIMEOUT)


def test_connected_device_is_disconnected_when_disabled(hub, registry, apps):
    device, connection_string = create_sas_device(registry, unique_id("cutoff"))
    app = apps.python_device("device", connection_string)
    app.expect("ready", CONNECT_TIMEOUT)
    # consume the first connect's state event, so that only later ones count below
    app.expect("connection_state", 10, match=lambda e: e["connected"] is True)
    assert app.request({"cmd": "connected"}, 10)["connected"] is True

    _set_status(registry, device, "disabled")

    app.expect("connection_state", 15, match=lambda e: e["connected"] is False, what="(disconnect after disable)")
    # the SDK retries at once after an unexpected drop; the hub must refuse that too
    app.expect_none("connection_state", 5, match=lambda e: e["connected"] is True, what="(reconnected while disabled)")
    assert app.request({"cmd": "connected"}, 10)["connected"] is False
