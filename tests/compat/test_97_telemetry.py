"""Device-to-cloud telemetry: the Python device SDK's `send_message` (and a module's
`send_message_to_output`) with system and custom properties, read back through fleethub's event
stream (`GET /events`, Server-Sent Events, a fleethub extension) with plain `requests`."""

import json
import time

import requests

from harness import (
    HTTPS_ADDRESS,
    HUB_HOSTNAME,
    create_sas_device,
    device_connection_string,
    service_token,
    unique_id,
)


def read_telemetry(hub, device_id: str, count: int, timeout: float = 30) -> list[dict]:
    """The first `count` telemetry events of `device_id`, from the oldest kept, via Server-Sent Events."""
    url = f"https://{HUB_HOSTNAME}:{HTTPS_ADDRESS[1]}/events"
    params = {"deviceId": device_id, "from": "@earliest", "api-version": "2021-04-12"}
    headers = {
        "Authorization": service_token(hub.connection_string("service")),
        "Accept": "text/event-stream",
    }
    found = []
    deadline = time.monotonic() + timeout
    with requests.get(
        url, params=params, headers=headers, stream=True, verify=str(hub.ca_path), timeout=timeout
    ) as response:
        assert response.status_code == 200, response.text
        assert "x-fleethub-stream-position" in response.headers
        event, data = None, []
        for line in response.iter_lines(decode_unicode=True):
            assert time.monotonic() < deadline, f"only {len(found)} of {count} events within {timeout} s"
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
            elif line == "":
                if event == "Telemetry" and data:
                    found.append(json.loads("\n".join(data)))
                    if len(found) == count:
                        return found
                event, data = None, []
    raise AssertionError(f"the stream ended after {len(found)} of {count} events")


def test_python_send_message_with_properties_reads_back_with_azures_system_properties(hub, registry, apps):
    device_id = unique_id("sensor")
    device, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device("sender", connection_string)
    app.expect("ready", 60)

    app.request(
        {
            "cmd": "send",
            "data": json.dumps({"temperature": 21.5}),
            "message_id": "mid-1",
            "correlation_id": "corr-1",
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "properties": {"alert": "high temp", "zz": "a&b=c/d"},
        },
        15,
    )
    app.request({"cmd": "send", "data": "plain string"}, 15)

    first, second = read_telemetry(hub, device_id, 2)
    assert json.loads(first["body"]) == {"temperature": 21.5}
    system = first["systemProperties"]
    assert system["message-id"] == "mid-1"
    assert system["correlation-id"] == "corr-1"
    assert system["content-type"] == "application/json"
    assert system["content-encoding"] == "utf-8"
    assert system["iothub-connection-device-id"] == device_id
    assert json.loads(system["iothub-connection-auth-method"]) == {
        "scope": "device",
        "type": "sas",
        "issuer": "iothub",
        "acceptingIpFilterRule": None,
    }
    assert system["iothub-connection-auth-generation-id"] == device.generation_id
    assert system["iothub-message-source"] == "Telemetry"
    assert system["iothub-enqueuedtime"].endswith("Z")
    assert first["properties"] == {"alert": "high temp", "zz": "a&b=c/d"}
    # Consecutive sequence numbers in the device's partition.
    assert second["partition"] == first["partition"]
    assert second["sequenceNumber"] == first["sequenceNumber"] + 1
    assert second["body"] == "plain string"
    assert second["properties"] == {}
    assert "message-id" not in second["systemProperties"]


def test_python_module_output_message_carries_module_and_output(hub, registry, apps):
    device_id = unique_id("edge")
    module_id = "filter"
    create_sas_device(registry, device_id)
    registry.create_module_with_sas(device_id, module_id, "", None, None)
    keys = registry.get_module(device_id, module_id).authentication.symmetric_key
    app = apps.python_device(
        "module-sender",
        device_connection_string(device_id, keys.primary_key, module_id=module_id),
        "--module",
    )
    app.expect("ready", 60)
    app.request({"cmd": "send", "data": "filtered", "output": "out1", "message_id": "m-1"}, 15)

    (event,) = read_telemetry(hub, device_id, 1)
    system = event["systemProperties"]
    assert event["body"] == "filtered"
    assert system["iothub-connection-module-id"] == module_id
    assert system["iothub-outputname"] == "out1"
    assert system["message-id"] == "m-1"
    assert json.loads(system["iothub-connection-auth-method"])["scope"] == "module"
