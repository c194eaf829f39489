"""Fixtures of the compatibility suite: a fresh hub per case, SDK apps, and a per-case deadline."""

from __future__ import annotations

import os
import signal

import pytest

from harness import (
    AppProcess,
    Hub,
    HubError,
    hub_binary,
    node_app,
    python_app,
)

DEFAULT_CASE_TIMEOUT = 120


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "case_timeout(seconds): hard deadline for the test body (default %d s)" % DEFAULT_CASE_TIMEOUT
    )


class CaseTimeout(BaseException):
    """Raised by SIGALRM in the test body. A BaseException, so that no `except Exception` swallows it."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("case_timeout")
    seconds = marker.args[0] if marker else DEFAULT_CASE_TIMEOUT

    def on_alarm(signum, frame):
        raise CaseTimeout(f"{item.nodeid} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the hub's stdout/stderr and every app's output to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for title, render in getattr(item, "compat_sections", []):
        try:
            report.sections.append((title, render()))
        except Exception as exc:  # a broken dump must not hide the real failure
            report.sections.append((title, f"(could not collect: {exc!r})"))


def _add_section(request, title, render):
    if not hasattr(request.node, "compat_sections"):
        request.node.compat_sections = []
    request.node.compat_sections.append((title, render))


@pytest.fixture
def hub(request, tmp_path, monkeypatch):
    """A fresh `fleethub serve` on a fresh data dir, healthy; stopped after the case.

    Yields a Hub with owner_connection_string, ca_pem, ca_path, data_dir, kill(), restart().
    The in-process service SDK trusts the hub CA through REQUESTS_CA_BUNDLE (this machine sets
    that variable to the system bundle, so it must be overridden, not merely added).
    """
    instance = Hub(hub_binary(), tmp_path)
    _add_section(request, "fleethub logs", instance.logs)
    failure = None
    try:
        instance.start()
    except HubError as exc:
        failure = str(exc)
    if failure is not None:
        instance.stop()
        pytest.fail(failure, pytrace=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(instance.ca_path))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def registry(hub):
    """The official Python service SDK's IoTHubRegistryManager, as iothubowner."""
    from azure.iot.hub import IoTHubRegistryManager

    return IoTHubRegistryManager.from_connection_string(hub.owner_connection_string)


class Apps:
    """Starts SDK apps for a case and stops them all afterwards."""

    def __init__(self, request, hub):
        self._request = request
        self._hub = hub
        self._started: list[AppProcess] = []

    def _start(self, name, argv, env):
        app = AppProcess(name, argv, env=env)
        self._started.append(app)
        _add_section(self._request, f"app {name}", app.output)
        return app

    def python_device(self, name, connection_string, *flags):
        env = dict(os.environ)
        return self._start(
            name,
            python_app("device.py")
            + ["--connection-string", connection_string, "--ca-file", str(self._hub.ca_path), *flags],
            env,
        )

    def node(self, name, script, *args):
        env = dict(os.environ)
        env["NODE_EXTRA_CA_CERTS"] = str(self._hub.ca_path)
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
        return self._start(name, node_app(script) + list(args), env)

    def close_all(self):
        for app in reversed(self._started):
            app.close()


@pytest.fixture
def apps(request, hub):
    manager = Apps(request, hub)
    try:
        yield manager
    finally:
        manager.close_all()

