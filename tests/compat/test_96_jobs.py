"""Jobs v2 through the official Python service SDK's IoTHubJobManager (`create_scheduled_job`,
`get_scheduled_job`, `query_scheduled_jobs`, `cancel_scheduled_job`) for both job types, with a Python
device answering the method and receiving the desired patch; per-device results through `query_iot_hub`
over `devices.jobs`."""

import datetime
import time

import pytest
from azure.iot.hub import IoTHubJobManager
from azure.iot.hub.models import CloudToDeviceMethod, JobRequest, QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from harness import create_sas_device, unique_id


@pytest.fixture
def jobs(hub):
    return IoTHubJobManager.from_connection_string(hub.owner_connection_string)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def wait_for_job(jobs, job_id, done, timeout, what):
    """Polls get_scheduled_job until done(job) (as an SDK user must); fails with the last job seen."""
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get_scheduled_job(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} not {what} after {timeout} s: {job.as_dict()}"
        time.sleep(0.2)


def statistics(job):
    stats = job.device_job_statistics
    return (stats.device_count, stats.succeeded_count, stats.failed_count, stats.running_count, stats.pending_count)


def queried_ids(jobs, job_type, job_status):
    result = jobs.query_scheduled_jobs(job_type, job_status)
    assert result.type == "jobResponse", result.type
    assert result.continuation_token is None
    return [item["jobId"] for item in result.items]


def device_jobs(registry, job_id):
    """The job's devices.jobs records; the SDK reads them as Twin objects, so job fields land in
    additional_properties."""
    result = registry.query_iot_hub(
        QuerySpecification(query=f"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job_id}'"), None, 100
    )
    assert result.type == "deviceJob", result.type
    return {item.device_id: item for item in result.items}


def test_method_job_reaches_a_python_device_and_fails_an_offline_one(hub, registry, jobs, apps):
    device_id = unique_id("jobdev")
    offline_id = unique_id("joboff")
    _, connection_string = create_sas_device(registry, device_id)
    create_sas_device(registry, offline_id)
    app = apps.python_device("device", connection_string, "--methods", "echo")
    app.expect("ready", 60)

    job_id = unique_id("method-job")
    created = jobs.create_scheduled_job(
        job_id,
        JobRequest(
            job_id=job_id,
            type="scheduleDeviceMethod",
            cloud_to_device_method=CloudToDeviceMethod(
                method_name="reboot", payload={"delay": 1}, response_timeout_in_seconds=30
            ),
            query_condition=f"deviceId IN ['{device_id}', '{offline_id}']",
            start_time=utc_now(),
            max_execution_time_in_seconds=5,
        ),
    )
    assert (created.job_id, created.type, created.status) == (job_id, "scheduleDeviceMethod", "queued")
    assert created.cloud_to_device_method.method_name == "reboot"
    assert created.max_execution_time_in_seconds == 5

    request = app.expect("method", 30)
    assert (request["name"], request["payload"]) == ("reboot", {"delay": 1})
    running = wait_for_job(jobs, job_id, lambda job: job.device_job_statistics.succeeded_count == 1, 30, "done with the device")
    assert running.status == "running", "the offline device keeps it running until its time runs out"
    job = wait_for_job(jobs, job_id, lambda job: job.status == "completed", 30, "completed")
    assert statistics(job) == (2, 1, 1, 0, 0)
    assert job.end_time is not None and job.created_time is not None
    assert job_id in queried_ids(jobs, "scheduleDeviceMethod", "completed")
    assert job_id not in queried_ids(jobs, "scheduleUpdateTwin", None)

    records = device_jobs(registry, job_id)
    assert set(records) == {device_id, offline_id}
    answered = records[device_id]
    assert answered.status == "completed"
    extra = answered.additional_properties
    assert extra["jobId"] == job_id and extra["jobType"] == "scheduleDeviceMethod"
    assert extra["outcome"]["deviceMethodResponse"] == {
        "status": 200,
        "payload": {"method": "reboot", "payload": {"delay": 1}},
    }
    for field in ("startTimeUtc", "endTimeUtc", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"):
        assert extra[field].endswith("Z"), (field, extra[field])
    offline = records[offline_id]
    assert offline.status == "failed"
    assert offline.additional_properties["error"]["code"] == "DeviceNotOnline"


def test_twin_job_updates_twins_and_reaches_a_connected_device(hub, registry, jobs, apps):
    device_id = unique_id("twindev")
    _, connection_string = create_sas_device(registry, device_id)
    app = apps.python_device("device", connection_string, "--desired")
    app.expect("ready", 60)

    job_id = unique_id("twin-job")
    created = jobs.create_scheduled_job(
        job_id,
        JobRequest(
            job_id=job_id,
            type="scheduleUpdateTwin",
            update_twin=Twin(tags={"ring": "canary"}, properties=TwinProperties(desired={"interval": 30}), etag="*"),
            query_condition=f"deviceId = '{device_id}'",
            start_time=utc_now(),
            max_execution_time_in_seconds=60,
        ),
    )
    assert (created.status, created.type) == ("queued", "scheduleUpdateTwin")
    job = wait_for_job(jobs, job_id, lambda job: job.status == "completed", 30, "completed")
    assert statistics(job) == (1, 1, 0, 0, 0)
    assert job.update_twin.tags == {"ring": "canary"}

    patch = app.expect("desired_patch", 15)["patch"]
    assert patch["interval"] == 30
    twin = registry.get_twin(device_id)
    assert twin.tags == {"ring": "canary"}
    assert twin.properties.desired["interval"] == 30
    assert job_id in queried_ids(jobs, "scheduleUpdateTwin", "completed")
    record = device_jobs(registry, job_id)[device_id]
    assert record.status == "completed"
    assert record.additional_properties["outcome"] == {"deviceMethodResponse": None}


def test_scheduled_and_running_jobs_are_cancelled(hub, registry, jobs):
    device_id = unique_id("canceldev")
    create_sas_device(registry, device_id)  # never connects: a method job waits for it

    later_id = unique_id("later")
    jobs.create_scheduled_job(
        later_id,
        JobRequest(
            job_id=later_id,
            type="scheduleUpdateTwin",
            update_twin=Twin(tags={"x": 1}, etag="*"),
            query_condition=f"deviceId = '{device_id}'",
            start_time=utc_now() + datetime.timedelta(hours=1),
            max_execution_time_in_seconds=600,
        ),
    )
    scheduled = wait_for_job(jobs, later_id, lambda job: job.status == "scheduled", 15, "scheduled")
    assert scheduled.start_time > utc_now()
    assert later_id in queried_ids(jobs, "scheduleUpdateTwin", "scheduled")

    waiting_id = unique_id("waiting")
    jobs.create_scheduled_job(
        waiting_id,
        JobRequest(
            job_id=waiting_id,
            type="scheduleDeviceMethod",
            cloud_to_device_method=CloudToDeviceMethod(method_name="ping", payload=None, response_timeout_in_seconds=10),
            query_condition=f"deviceId = '{device_id}'",
            start_time=utc_now(),
            max_execution_time_in_seconds=600,
        ),
    )
    wait_for_job(jobs, waiting_id, lambda job: job.device_job_statistics.pending_count == 1, 15, "waiting for the device")
    assert waiting_id in queried_ids(jobs, "scheduleDeviceMethod", "running")

    for job_id in (later_id, waiting_id):
        cancelled = jobs.cancel_scheduled_job(job_id)
        assert cancelled.job_id == job_id
        assert cancelled.status == "cancelled", cancelled.as_dict()
        assert jobs.get_scheduled_job(job_id).status == "cancelled"
    assert statistics(jobs.get_scheduled_job(later_id)) == (0, 0, 0, 0, 0)
    assert statistics(jobs.get_scheduled_job(waiting_id)) == (1, 0, 0, 0, 0)
    assert queried_ids(jobs, None, "cancelled") == sorted([later_id, waiting_id])
    assert device_jobs(registry, waiting_id)[device_id].status == "canceled"

    # The SDK sees refusals as HttpOperationError with Azure's codes.
    with pytest.raises(HttpOperationError) as raised:
        jobs.create_scheduled_job(later_id, JobRequest(job_id=later_id, type="scheduleUpdateTwin",
                                                       update_twin=Twin(tags={"x": 2}), query_condition="deviceId = 'x'"))
    assert raised.value.response.status_code == 409
    assert raised.value.response.headers.get("iothub-errorcode") == "JobAlreadyExists"
    with pytest.raises(HttpOperationError) as raised:
        jobs.get_scheduled_job(unique_id("missing"))
    assert raised.value.response.status_code == 404
    assert raised.value.response.headers.get("iothub-errorcode") == "JobNotFound"
    with pytest.raises(HttpOperationError) as raised:
        jobs.create_scheduled_job("bad-query", JobRequest(job_id="bad-query", type="scheduleUpdateTwin",
                                                          update_twin=Twin(tags={"x": 2}), query_condition="tags.x = "))
    assert raised.value.response.status_code == 400
    assert "syntax error" in raised.value.response.text
