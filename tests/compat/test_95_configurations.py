"""Automatic device management through the official Python service SDK's `IoTHubConfigurationManager`:
create / get / list / update / delete (with its unquoted `If-Match: *`), and the effect on device twins and
on a connected device."""

import time

import pytest
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.protocol.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    Twin,
)
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, unique_id

# fleethub acts on a configuration change within 1 s; the waits below allow for a slow CI machine.
SETTLE = 10


def wait_for(what, check, timeout=SETTLE, interval=0.1):
    """Polls `check` (the service SDK has no push channel for twins) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def configuration_status(registry, device_id, configuration_id):
    twin = registry.get_twin(device_id)
    configurations = (twin.additional_properties or {}).get("configurations") or {}
    return (configurations.get(configuration_id) or {}).get("status")


@pytest.fixture
def configurations(hub):
    return IoTHubConfigurationManager.from_connection_string(hub.owner_connection_string)


def test_configuration_lifecycle_and_its_effect_on_twins(hub, registry, configurations, apps):
    device_id = unique_id("cfg-dev")
    _, connection_string = create_sas_device(registry, device_id)
    registry.update_twin(device_id, Twin(tags={"environment": "prod"}), "*")
    other_id = unique_id("cfg-other")
    create_sas_device(registry, other_id)
    registry.update_twin(other_id, Twin(tags={"environment": "test"}), "*")
    app = apps.python_device("device", connection_string, "--desired")
    app.expect("ready", 60)

    config_id = unique_id("chiller").lower()
    created = configurations.create_configuration(
        Configuration(
            id=config_id,
            labels={"purpose": "chillers"},
            content=ConfigurationContent(
                device_content={"properties.desired.chillerWaterSettings": {"temperature": 38, "pressure": 78}}
            ),
            target_condition="tags.environment='prod'",
            priority=20,
            metrics=ConfigurationMetrics(
                queries={
                    "waterSettingsPending": "SELECT deviceId FROM devices WHERE properties.reported.chillerWaterSettings.status='pending'"
                }
            ),
        )
    )
    assert created.id == config_id
    assert created.etag
    assert created.priority == 20
    assert created.labels == {"purpose": "chillers"}
    assert created.created_time_utc is not None
    assert created.schema_version == "1.0"
    assert set(created.system_metrics.results) == {"targetedCount", "appliedCount"}
    assert "configurations.[[%s]].status = 'Applied'" % config_id in created.system_metrics.queries["appliedCount"]

    # The device receives the content; its twin says the configuration is applied; the other is untouched.
    pushed = app.expect("desired_patch", SETTLE, match=lambda e: "chillerWaterSettings" in e["patch"])["patch"]
    assert pushed["chillerWaterSettings"] == {"temperature": 38, "pressure": 78}
    wait_for("applied status", lambda: configuration_status(registry, device_id, config_id) == "applied")
    assert registry.get_twin(device_id).properties.desired["chillerWaterSettings"] == {"temperature": 38, "pressure": 78}
    assert configuration_status(registry, other_id, config_id) is None

    # get and list
    fetched = configurations.get_configuration(config_id)
    assert fetched.id == config_id
    assert fetched.etag == created.etag
    assert fetched.content.device_content == created.content.device_content
    fetched = wait_for(
        "system metrics",
        lambda: (lambda c: c if c.system_metrics.results.get("appliedCount") == 1 else None)(
            configurations.get_configuration(config_id)
        ),
    )
    assert fetched.system_metrics.results["targetedCount"] == 1
    assert fetched.metrics.results == {"waterSettingsPending": 0}
    listed = configurations.get_configurations(10)
    assert config_id in [configuration.id for configuration in listed]

    # A custom metric follows the devices' reports.
    app.request({"cmd": "report", "patch": {"chillerWaterSettings": {"status": "pending"}}}, 15)
    wait_for(
        "custom metric",
        lambda: configurations.get_configuration(config_id).metrics.results.get("waterSettingsPending") == 1,
    )

    # Content is immutable; priority and the rest may change with the etag.
    fetched.content = ConfigurationContent(device_content={"properties.desired.chillerWaterSettings": {"temperature": 1}})
    with pytest.raises(HttpOperationError) as raised:
        configurations.update_configuration(fetched, fetched.etag)
    assert raised.value.response.status_code == 400, raised.value.response.text
    assert raised.value.response.headers["iothub-errorcode"] == "CannotModifyImmutableConfigurationContent"
    current = configurations.get_configuration(config_id)
    current.priority = 30
    updated = configurations.update_configuration(current, current.etag)
    assert updated.priority == 30
    assert updated.etag != current.etag
    with pytest.raises(HttpOperationError) as raised:
        configurations.update_configuration(current, current.etag)
    assert raised.value.response.status_code == 412, raised.value.response.text

    # Creating the same id again is a conflict.
    with pytest.raises(HttpOperationError) as raised:
        configurations.create_configuration(
            Configuration(id=config_id, content=ConfigurationContent(device_content={}), target_condition="*")
        )
    assert raised.value.response.status_code == 409, raised.value.response.text

    # testQueries
    result = configurations.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.environment='prod'",
            custom_metric_queries={"bad": "SELECT deviceId FROM"},
        )
    )
    assert not result.target_condition_error
    assert "bad" in result.custom_metric_query_errors

    # Delete (the SDK sends `If-Match: *` unquoted): the device loses the settings.
    configurations.delete_configuration(config_id)
    removal = app.expect(
        "desired_patch",
        SETTLE,
        match=lambda e: "chillerWaterSettings" in e["patch"] and e["patch"]["chillerWaterSettings"] is None,
    )["patch"]
    assert removal["chillerWaterSettings"] is None
    wait_for("status gone", lambda: configuration_status(registry, device_id, config_id) is None)
    assert "chillerWaterSettings" not in registry.get_twin(device_id).properties.desired
    with pytest.raises(HttpOperationError) as raised:
        configurations.get_configuration(config_id)
    assert raised.value.response.status_code == 404, raised.value.response.text
    assert raised.value.response.headers["iothub-errorcode"] == "ConfigurationNotFound"
