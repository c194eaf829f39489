"""Cloud-to-device messages: the Python device SDK's `on_message_received` gets messages sent through
fleethub's REST endpoint (`POST /devices/{id}/messages/deviceBound`, a fleethub extension: the official
service SDKs send C2D over AMQP, which fleethub does not speak), with system and custom properties; a
message queued while the device was offline arrives when it subscribes; the SDK's automatic PUBACK
completes the message, which the feedback endpoint (`GET /messages/serviceBound/feedback`, Azure's REST
shape) then reports."""

import json
import time

import requests

from harness import HTTPS_ADDRESS, HUB_HOSTNAME, create_sas_device, service_token, unique_id

BASE = f"https://{HUB_HOSTNAME}:{HTTPS_ADDRESS[1]}"
API_VERSION = {"api-version": "2021-04-12"}


def service_headers(hub) -> dict:
    return {"Authorization": service_token(hub.connection_string("service"))}


def send_c2d(hub, device_id: str, request: dict) -> dict:
    response = requests.post(
        f"{BASE}/devices/{device_id}/messages/deviceBound",
        params=API_VERSION,
        headers=service_headers(hub),
        json=request,
        verify=str(hub.ca_path),
        timeout=15,
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_feedback(hub, count: int, timeout: float = 30) -> list[dict]:
    """`count` feedback records, each batch completed once read (Azure's receive/complete cycle)."""
    records = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"only {records} of {count} feedback records within {timeout} s"
        response = requests.get(
            f"{BASE}/messages/serviceBound/feedback",
            params=API_VERSION,
            headers=service_headers(hub),
            verify=str(hub.ca_path),
            timeout=15,
        )
        if response.status_code == 204:
            time.sleep(0.2)
            continue
        assert response.status_code == 200, response.text
        records.extend(response.json())
        lock_token = response.headers["ETag"].strip('"')
        completed = requests.delete(
            f"{BASE}/messages/serviceBound/feedback/{lock_token}",
            params=API_VERSION,
            headers=service_headers(hub),
            verify=str(hub.ca_path),
            timeout=15,
        )
        assert completed.status_code == 204, completed.text
    return records


def test_python_on_message_received_gets_c2d_with_properties_and_feedback_follows(hub, registry, apps):
    device_id = unique_id("actuator")
    _, connection_string = create_sas_device(registry, device_id)

    # Queued before the device is online: delivered once it subscribes.
    queued = send_c2d(hub, device_id, {"body": "queued while offline", "messageId": "early-1", "ack": "positive"})
    assert queued["messageId"] == "early-1"

    app = apps.python_device("receiver", connection_string, "--c2d")
    app.expect("ready", 60)
    early = app.expect("c2d", 30, lambda event: event["message_id"] == "early-1", "the queued message")
    assert early["data"] == "queued while offline"

    sent = send_c2d(
        hub,
        device_id,
        {
            "body": json.dumps({"led": "on"}),
            "messageId": "cmd-1",
            "correlationId": "corr-1",
            "userId": "ops",
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "ack": "full",
            "ttlSeconds": 600,
            "properties": {"priority": "high", "zone": "a-1"},
        },
    )
    assert sent["sequenceNumber"] > queued["sequenceNumber"]

    live = app.expect("c2d", 30, lambda event: event["message_id"] == "cmd-1", "the live message")
    assert json.loads(live["data"]) == {"led": "on"}
    assert live["correlation_id"] == "corr-1"
    assert live["user_id"] == "ops"
    assert live["content_type"] == "application/json"
    assert live["content_encoding"] == "utf-8"
    assert live["ack"] == "full"
    assert live["expiry_time_utc"].startswith(sent["expiryTimeUtc"][:19])
    assert live["custom_properties"] == {"priority": "high", "zone": "a-1"}

    # paho PUBACKs before the app sees a message: both complete, both asked for success feedback.
    records = wait_for_feedback(hub, 2)
    assert sorted(record["originalMessageId"] for record in records) == ["cmd-1", "early-1"]
    for record in records:
        assert record["statusCode"] == "Success"
        assert record["deviceId"] == device_id
        assert record["enqueuedTimeUtc"].endswith("Z")
