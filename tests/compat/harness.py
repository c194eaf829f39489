"""Process plumbing for the compatibility suite: the hub under test and the SDK apps.

The hub is a real `fleethub serve` process; device apps (Python and Node) run as subprocesses
that speak JSON lines: one event per line on stdout, one command per line on stdin. Every wait
here has a deadline, so a hung SDK or hub fails the case instead of hanging CI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Optional

COMPAT_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPAT_DIR.parent.parent
APPS_DIR = COMPAT_DIR / "apps"
NODE_DIR = COMPAT_DIR / "node"

# The Python device SDK dials 8883 (MQTT/TLS) and 443 (MQTT/WSS) and nothing else; the Node
# service SDK only speaks REST on 443. So the hub must listen on exactly these ports.
HUB_HOSTNAME = "localhost"
MQTT_ADDRESS = ("127.0.0.1", 8883)
HTTPS_ADDRESS = ("127.0.0.1", 443)

HUB_START_TIMEOUT = float(os.environ.get("FLEETHUB_COMPAT_START_TIMEOUT", "60"))
HUB_STOP_TIMEOUT = 10.0
LOG_TAIL_BYTES = 64 * 1024


class HubError(Exception):
    """The hub under test could not be started, queried or stopped."""


def hub_binary() -> Path:
    """$FLEETHUB_BIN (a path, or a command on PATH), else the workspace's debug build."""
    configured = os.environ.get("FLEETHUB_BIN")
    if not configured:
        return REPO_ROOT / "target" / "debug" / "fleethub"
    if os.sep not in configured:
        found = shutil.which(configured)
        if found:
            return Path(found)
    # the hub runs with its work dir as cwd, so a relative path must be made absolute here
    return Path(configured).absolute()


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "(no output file)"
    if len(data) > limit:
        data = b"[... cut ...]\n" + data[-limit:]
    text = data.decode("utf-8", errors="replace")
    return text if text.strip() else "(empty)"


def _port_is_listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


class Hub:
    """One `fleethub serve` process on a data directory of its own."""

    def __init__(self, binary: Path, work_dir: Path):
        self.binary = binary
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.ca_path = self.data_dir / "ca.pem"
        self.stdout_path = work_dir / "hub.stdout.log"
        self.stderr_path = work_dir / "hub.stderr.log"
        self.process: Optional[subprocess.Popen] = None
        self.ca_pem: Optional[str] = None
        self.owner_connection_string: Optional[str] = None
        self.start_count = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.binary.exists():
            raise HubError(
                f"hub binary {self.binary} does not exist: build it with `cargo build -p fleethub` "
                "or point FLEETHUB_BIN at one"
            )
        self._wait_for_free_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.start_count += 1
        banner = f"--- fleethub start #{self.start_count} at {time.strftime('%H:%M:%S')} ---\n"
        argv = [
            str(self.binary), "serve",
            "--data-dir", str(self.data_dir),
            "--hostname", HUB_HOSTNAME,
            "--mqtt-listen", "%s:%d" % MQTT_ADDRESS,
            "--https-listen", "%s:%d" % HTTPS_ADDRESS,
        ]
        with open(self.stdout_path, "a") as out, open(self.stderr_path, "a") as err:
            out.write(banner)
            err.write(banner)
            out.flush()
            err.flush()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.work_dir
            )
        self._wait_until_healthy()
        ca_pem = self.ca_path.read_text()
        if self.ca_pem is not None and ca_pem != self.ca_pem:
            raise HubError(
                f"{self.ca_path} changed across a restart on the same data dir: devices that "
                "pinned the old CA can no longer reconnect"
            )
        self.ca_pem = ca_pem
        if self.owner_connection_string is None:
            self.owner_connection_string = self.connection_string()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if the hub is still running after 10 s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(HUB_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with open(self.stderr_path, "a") as err:
                err.write(f"--- compat suite: no exit {HUB_STOP_TIMEOUT:.0f} s after SIGTERM, sending SIGKILL ---\n")
            process.kill()
            process.wait(HUB_STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would; waits until the process is gone."""
        process = self.process
        if process is None or process.poll() is not None:
            raise HubError("kill(): the hub is not running")
        process.kill()
        process.wait(HUB_STOP_TIMEOUT)

    def restart(self) -> None:
        """Start again on the same data dir (stopping first if needed) and wait for /healthz."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- queries ------------------------------------------------------------------------------

    def connection_string(self, policy: Optional[str] = None) -> str:
        argv = [str(self.binary), "connection-string", "--data-dir", str(self.data_dir)]
        if policy is not None:
            argv += ["--policy", policy]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise HubError(f"{' '.join(argv)} did not finish within 30 s") from exc
        if done.returncode != 0:
            raise HubError(
                f"{' '.join(argv)} exited with {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        value = done.stdout.strip()
        expected_policy = policy or "iothubowner"
        fields = dict(part.split("=", 1) for part in value.split(";") if "=" in part)
        if (
            fields.get("HostName") != HUB_HOSTNAME
            or fields.get("SharedAccessKeyName") != expected_policy
            or not fields.get("SharedAccessKey")
        ):
            raise HubError(f"unexpected output of {' '.join(argv)}: {done.stdout!r}")
        return value

    def logs(self) -> str:
        return (
            f"===== hub stdout ({self.stdout_path}) =====\n{_tail(self.stdout_path)}\n"
            f"===== hub stderr ({self.stderr_path}) =====\n{_tail(self.stderr_path)}"
        )

    # -- internals ----------------------------------------------------------------------------

    def _wait_for_free_ports(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            busy = [a for a in (MQTT_ADDRESS, HTTPS_ADDRESS) if _port_is_listening(a)]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise HubError(
                    "something already listens on "
                    + ", ".join("%s:%d" % a for a in busy)
                    + " (a leftover fleethub?); the suite needs these ports for itself"
                )
            time.sleep(0.2)

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + HUB_START_TIMEOUT
        last_error: object = "ca.pem not written yet"
        url = f"https://{HUB_HOSTNAME}:{HTTPS_ADDRESS[1]}/healthz"
        while True:
            code = self.process.poll()
            if code is not None:
                raise HubError(f"fleethub serve exited with {code} before {url} answered 200 (its output is below)")
            if self.ca_path.exists():
                try:
                    context = ssl.create_default_context(cafile=str(self.ca_path))
                    opener = urllib.request.build_opener(
                        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
                    )
                    with opener.open(url, timeout=2) as response:
                        if response.status == 200:
                            return
                        last_error = f"status {response.status}"
                except (OSError, ssl.SSLError, urllib.error.URLError, http.client.HTTPException) as exc:
                    last_error = exc
            if time.monotonic() > deadline:
                raise HubError(
                    f"{url} did not answer 200 (verified with {self.ca_path}) within "
                    f"{HUB_START_TIMEOUT:.0f} s; last error: {last_error} (the hub's output is below)"
                )
            time.sleep(0.1)


class AppProcess:
    """An SDK app in a subprocess: JSON events on stdout, JSON commands on stdin.

    Every event has an "event" key. An app reports an unrecoverable problem as a "fatal" event
    and exits; waiting on such an app fails at once with its output.
    """

    def __init__(self, name: str, argv: list[str], env: Optional[dict] = None, cwd: Optional[Path] = None):
        self.name = name
        self.argv = argv
        self.events: list[dict] = []
        self._consumed: set[int] = set()
        self._output: list[str] = []
        self._condition = threading.Condition()
        self._streams_open = 2
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        for stream, label in ((self.process.stdout, "out"), (self.process.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, label), daemon=True).start()

    def _pump(self, stream, label: str) -> None:
        for line in stream:
            line = line.rstrip("\n")
            event = None
            if label == "out" and line.startswith("{"):
                try:
                    parsed = json.loads(line)
                    if isinstance(parsed, dict) and "event" in parsed:
                        event = parsed
                except ValueError:
                    pass
            with self._condition:
                self._output.append(f"[{time.strftime('%H:%M:%S')} {label}] {line}")
                if event is not None:
                    self.events.append(event)
                self._condition.notify_all()
        with self._condition:
            self._streams_open -= 1
            self._condition.notify_all()

    # -- waiting ------------------------------------------------------------------------------

    def events_named(self, name: str) -> list[dict]:
        with self._condition:
            return [e for e in self.events if e["event"] == name]

    def expect(self, name: str, timeout: float, match: Optional[Callable[[dict], bool]] = None, what: str = "") -> dict:
        """Return the first not yet consumed event called `name` (and satisfying `match`)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for index, event in enumerate(self.events):
                    if event["event"] == "fatal":
                        raise AssertionError(f"{self.name} failed: {event}\n{self.output()}")
                    if index in self._consumed or event["event"] != name:
                        continue
                    if match is None or match(event):
                        self._consumed.add(index)
                        return event
                remaining = deadline - time.monotonic()
                if self._streams_open == 0:
                    raise AssertionError(
                        f"{self.name} exited (code {self.process.poll()}) without the event "
                        f"{name!r} {what}\n{self.output()}"
                    )
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.name}: no event {name!r} {what} within {timeout:.0f} s\n{self.output()}"
                    )
                self._condition.wait(min(remaining, 0.5))

    def expect_none(self, name: str, duration: float, match: Optional[Callable[[dict], bool]] = None, what: str = "") -> None:
        """Assert that no unconsumed event `name` (satisfying `match`) shows up within `duration`."""
        deadline = time.monotonic() + duration
        with self._condition:
            while True:
                for index, event in enumerate(self.events):
                    if index in self._consumed or event["event"] != name:
                        continue
                    if match is None or match(event):
                        raise AssertionError(f"{self.name}: unexpected event {event} {what}\n{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._condition.wait(min(remaining, 0.5))

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f} s\n{self.output()}")
        # let the pump threads drain the pipes
        with self._condition:
            end = time.monotonic() + 5
            while self._streams_open and time.monotonic() < end:
                self._condition.wait(0.2)
        return code

    # -- commands -----------------------------------------------------------------------------

    _next_request = 0

    def send(self, command: dict) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def request(self, command: dict, timeout: float) -> dict:
        """Send a command carrying a fresh "id" and wait for the "done" event with that id.

        A command that the app could not carry out is reported as a "failed" event; then this
        raises with the app's description of the error.
        """
        AppProcess._next_request += 1
        request_id = AppProcess._next_request
        self.send(dict(command, id=request_id))
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for index, event in enumerate(self.events):
                    if event.get("id") != request_id or index in self._consumed:
                        continue
                    self._consumed.add(index)
                    if event["event"] == "failed":
                        raise AssertionError(f"{self.name}: {command['cmd']} failed: {event}\n{self.output()}")
                    return event
                if any(e["event"] == "fatal" for e in self.events):
                    raise AssertionError(f"{self.name} failed\n{self.output()}")
                remaining = deadline - time.monotonic()
                if self._streams_open == 0:
                    raise AssertionError(f"{self.name} exited during {command}\n{self.output()}")
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: {command} got no answer within {timeout:.0f} s\n{self.output()}")
                self._condition.wait(min(remaining, 0.5))

    def close(self) -> None:
        """Ask the app to exit; SIGKILL its process group if it has not after 8 s."""
        if self.process.poll() is None:
            try:
                self.send({"cmd": "exit"})
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.process.wait(8)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(5)
        for stream in (self.process.stdin,):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass

    def output(self) -> str:
        with self._condition:
            lines = list(self._output)
        if len(lines) > 400:
            lines = lines[:50] + [f"[... {len(lines) - 350} lines cut ...]"] + lines[-300:]
        return f"===== {self.name}: {' '.join(self.argv)} =====\n" + ("\n".join(lines) or "(no output)")


def python_app(script: str) -> list[str]:
    """argv prefix that runs tests/compat/apps/<script> with this interpreter (the suite's venv)."""
    return [sys.executable, "-u", str(APPS_DIR / script)]


def node_app(script: str) -> list[str]:
    return ["node", str(NODE_DIR / script)]


def device_connection_string(device_id: str, key: str, module_id: Optional[str] = None) -> str:
    parts = [f"HostName={HUB_HOSTNAME}", f"DeviceId={device_id}"]
    if module_id is not None:
        parts.append(f"ModuleId={module_id}")
    parts.append(f"SharedAccessKey={key}")
    return ";".join(parts)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_sas_device(registry, device_id: str, status: str = "enabled"):
    """Create a device with hub-generated SAS keys (the SDK sends `"symmetricKey": {}`).

    Returns (device as read back with get_device, device connection string).
    """
    registry.create_device_with_sas(device_id, None, None, status)
    device = registry.get_device(device_id)
    keys = device.authentication.symmetric_key
    assert keys is not None and keys.primary_key and keys.secondary_key, (
        f"hub generated no SAS keys for {device_id}: {device.as_dict()}"
    )
    assert keys.primary_key != keys.secondary_key
    return device, device_connection_string(device_id, keys.primary_key)

def service_token(connection_string: str, ttl: int = 600) -> str:
    """A service SAS token signed like the official SDKs sign one (PROTOCOL.md §3.1)."""
    fields = dict(part.split("=", 1) for part in connection_string.split(";"))
    resource = urllib.parse.quote(fields["HostName"], safe="")
    expiry = int(time.time()) + ttl
    key = base64.b64decode(fields["SharedAccessKey"])
    signature = base64.b64encode(
        hmac.new(key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode()
    return (
        f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(signature, safe='')}"
        f"&se={expiry}&skn={fields['SharedAccessKeyName']}"
    )
