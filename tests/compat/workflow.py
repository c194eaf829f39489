"""The reference workflow (DESIGN.md): checks shared by its Python and Node variants."""

from __future__ import annotations

import datetime
import re
import time

FW_PACKAGE_URI = "https://example.invalid/fw.bin"
METHOD_RESPONSE = {"Response": "Firmware update started"}
STATES = ("standBy", "downloading", "applying", "completed")
TIME_KEYS = ("logTime", "downloadComplete", "startedApplyingImage", "lastFirmwareUpdate")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?Z$")


def parse_timestamp(value: str) -> datetime.datetime:
    """Azure's `$lastUpdated`: ISO-8601 UTC with `Z` and up to 7 fractional digits."""
    match = _TIMESTAMP.match(value or "")
    assert match, f"not an ISO-8601 UTC timestamp ending in Z: {value!r}"
    whole, fraction = match.groups()
    micros = int((fraction or "0").ljust(7, "0")[:6])
    return datetime.datetime.fromisoformat(whole).replace(microsecond=micros)


def poll_until_completed(get_reported, timeout: float = 30, interval: float = 0.5):
    """Poll like the tutorial's service app; return (final reported, distinct states seen in order).

    Fails as soon as the status goes backwards or is not one of the workflow's states.
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        reported = get_reported()
        status = reported.get("firmwareStatus")
        assert status in STATES, f"unexpected firmwareStatus {status!r} in {reported}"
        if seen:
            assert STATES.index(status) >= STATES.index(seen[-1]), f"status went backwards: {seen} then {status}"
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "completed":
            return reported, seen
        assert time.monotonic() < deadline, f"no 'completed' within {timeout} s; seen {seen}; last {reported}"
        time.sleep(interval)


def check_final_reported(final: dict, device_reports: list[dict], standby_version: int) -> None:
    """The final reported section holds exactly what the device reported, versioned and stamped."""
    assert [p["firmwareStatus"] for p in device_reports] == list(STATES), device_reports
    assert final["firmwareStatus"] == "completed"
    for patch in device_reports:
        for key, value in patch.items():
            if key != "firmwareStatus":
                assert final.get(key) == value, f"reported {key}={value!r}, twin has {final.get(key)!r}"
    for key in TIME_KEYS:
        assert key in final, f"{key} missing from reported properties {final}"

    # each of the three background patches bumps reported.$version by one
    assert final["$version"] == standby_version + 3, (final["$version"], standby_version)

    metadata = final["$metadata"]
    parse_timestamp(metadata["$lastUpdated"])
    stamps = {key: parse_timestamp(metadata[key]["$lastUpdated"]) for key in ("firmwareStatus",) + TIME_KEYS}
    assert stamps["logTime"] <= stamps["downloadComplete"] <= stamps["startedApplyingImage"] <= stamps["lastFirmwareUpdate"], stamps
    # firmwareStatus was last written by the same patch as lastFirmwareUpdate
    assert stamps["firmwareStatus"] == stamps["lastFirmwareUpdate"], stamps
    assert parse_timestamp(metadata["$lastUpdated"]) >= stamps["lastFirmwareUpdate"]
