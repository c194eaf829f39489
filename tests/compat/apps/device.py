"""A device or module app on the official Python device SDK (azure-iot-device), driven by the suite.

Talks to the suite over JSON lines: events on stdout, commands on stdin. Behaviour is chosen by
flags, so one app covers every Python device case:

  --methods firmware   the reference workflow: `firmwareUpdate` answers 200
                       {"Response": "Firmware update started"} at once, then reports
                       downloading/applying/completed in the background
  --methods echo       every method answers 200 {"method": name, "payload": payload}
  --methods silent     method requests are recorded but never answered
  --desired            desired-property patches are reported as "desired_patch" events
  --report-standby     reports {"firmwareStatus": "standBy", "logTime": ...} before "ready"
  --c2d                cloud-to-device messages (`on_message_received`) are reported as "c2d" events
                       with their data and properties

Commands: {"cmd": "get_twin"}, {"cmd": "report", "patch": {...}}, {"cmd": "connected"},
{"cmd": "send", "data": "...", "message_id": ..., "correlation_id": ..., "content_type": ...,
"content_encoding": ..., "properties": {...}, "output": ...} (send_message, or send_message_to_output
with "output"), {"cmd": "exit"}; each command's "id" comes back in its "done" (or "failed") event.
"""

import argparse
import datetime
import json
import logging
import os
import sys
import threading
import time
import traceback

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message, MethodResponse

_stdout_lock = threading.Lock()


def emit(event, **fields):
    line = json.dumps(dict(event=event, **fields), default=str)
    with _stdout_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def describe(exc):
    cause = exc.__cause__ or exc.__context__
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "cause": type(cause).__name__ if cause is not None else None,
        "cause_message": str(cause) if cause is not None else None,
    }


def hard_exit(client, code):
    """Shut the client down, but never wait more than 5 s for it (SDK calls can block forever)."""
    if client is not None:
        stopper = threading.Thread(target=client.shutdown, daemon=True)
        stopper.start()
        stopper.join(5)
    sys.stdout.flush()
    os._exit(code)


FIRMWARE_STEPS = (
    ("downloading", "downloadComplete"),
    ("applying", "startedApplyingImage"),
    ("completed", "lastFirmwareUpdate"),
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--websockets", action="store_true")
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--methods", choices=("none", "firmware", "echo", "silent"), default="none")
    parser.add_argument("--desired", action="store_true")
    parser.add_argument("--report-standby", action="store_true")
    parser.add_argument("--c2d", action="store_true")
    parser.add_argument("--step-delay", type=float, default=0.3)
    args = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("azure.iot.device").setLevel(logging.INFO)

    with open(args.ca_file) as f:
        ca_pem = f.read()
    client_class = IoTHubModuleClient if args.module else IoTHubDeviceClient
    client = client_class.create_from_connection_string(
        args.connection_string, server_verification_cert=ca_pem, websockets=args.websockets
    )
    client.on_connection_state_change = lambda: emit("connection_state", connected=client.connected)
    client.on_background_exception = lambda exc: emit("background_exception", **describe(exc))

    try:
        client.connect()
    except Exception as exc:  # the refusal cases assert on exactly this
        emit("connect_failed", **describe(exc))
        hard_exit(client, 3)

    def run_firmware_update(payload):
        try:
            for status, time_key in FIRMWARE_STEPS:
                time.sleep(args.step_delay)
                patch = {"firmwareStatus": status, time_key: utc_now()}
                client.patch_twin_reported_properties(patch)
                emit("reported", patch=patch)
            emit("firmware_done", payload=payload)
        except Exception as exc:
            emit("fatal", where="firmware update", traceback=traceback.format_exc(), **describe(exc))

    def on_method(request):
        try:
            emit("method", name=request.name, payload=request.payload, request_id=request.request_id)
            if args.methods == "silent":
                return
            if args.methods == "firmware":
                if request.name != "firmwareUpdate":
                    response = MethodResponse.create_from_method_request(
                        request, 404, {"Response": "unknown method " + request.name}
                    )
                    client.send_method_response(response)
                    emit("method_answered", name=request.name, status=404)
                    return
                response = MethodResponse.create_from_method_request(
                    request, 200, {"Response": "Firmware update started"}
                )
                client.send_method_response(response)
                emit("method_answered", name=request.name, status=200)
                threading.Thread(target=run_firmware_update, args=(request.payload,), daemon=True).start()
                return
            response = MethodResponse.create_from_method_request(
                request, 200, {"method": request.name, "payload": request.payload}
            )
            client.send_method_response(response)
            emit("method_answered", name=request.name, status=200)
        except Exception as exc:
            emit("fatal", where="method handler", traceback=traceback.format_exc(), **describe(exc))

    try:
        if args.report_standby:
            patch = {"firmwareStatus": "standBy", "logTime": utc_now()}
            client.patch_twin_reported_properties(patch)
            emit("reported", patch=patch)
        if args.methods != "none":
            client.on_method_request_received = on_method
        if args.desired:
            client.on_twin_desired_properties_patch_received = lambda patch: emit("desired_patch", patch=patch)
        if args.c2d:
            client.on_message_received = lambda message: emit(
                "c2d",
                data=message.data.decode("utf-8", errors="replace"),
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                user_id=message.user_id,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                expiry_time_utc=message.expiry_time_utc,
                ack=message.ack,
                custom_properties=message.custom_properties,
            )
    except Exception as exc:
        emit("fatal", where="start-up", traceback=traceback.format_exc(), **describe(exc))
        hard_exit(client, 4)

    emit("ready")

    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        name = command.get("cmd")
        request_id = command.get("id")
        if name == "exit":
            break
        try:
            if name == "get_twin":
                emit("done", id=request_id, twin=client.get_twin())
            elif name == "report":
                client.patch_twin_reported_properties(command["patch"])
                emit("done", id=request_id)
            elif name == "connected":
                emit("done", id=request_id, connected=client.connected)
            elif name == "send":
                message = Message(
                    command["data"],
                    message_id=command.get("message_id"),
                    content_encoding=command.get("content_encoding"),
                    content_type=command.get("content_type"),
                )
                message.correlation_id = command.get("correlation_id")
                for key, value in command.get("properties", {}).items():
                    message.custom_properties[key] = value
                if command.get("output"):
                    client.send_message_to_output(message, command["output"])
                else:
                    client.send_message(message)
                emit("done", id=request_id)
            else:
                emit("failed", id=request_id, error="unknown command", message=repr(name))
        except Exception as exc:
            emit("failed", id=request_id, traceback=traceback.format_exc(), **describe(exc))

    hard_exit(client, 0)


if __name__ == "__main__":
    main()
