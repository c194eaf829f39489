"""Twin queries through the official Python service SDK: `query_iot_hub` with paging (continuation tokens)."""

from azure.iot.hub.protocol.models import QuerySpecification, Twin

from harness import create_sas_device, unique_id


def test_query_iot_hub_pages_through_every_match(hub, registry):
    prefix = unique_id("q")
    ids = [f"{prefix}-{index:02}" for index in range(7)]
    for index, device_id in enumerate(ids):
        create_sas_device(registry, device_id)
        site = "north" if index % 2 == 0 else "south"
        registry.update_twin(device_id, Twin(tags={"site": site, "n": index}), "*")

    text = f"SELECT * FROM devices WHERE tags.site = 'north' AND STARTSWITH(deviceId, '{prefix}')"
    seen = []
    continuation = None
    pages = 0
    while True:
        result = registry.query_iot_hub(QuerySpecification(query=text), continuation, 2)
        pages += 1
        assert result.type == "twin", result.type
        for twin in result.items:
            assert twin.tags["site"] == "north"
            assert twin.properties.desired["$version"] >= 1
            seen.append(twin.device_id)
        continuation = result.continuation_token
        if not continuation:
            break
    assert seen == [ids[0], ids[2], ids[4], ids[6]], seen
    assert pages >= 2, "two results per page means several pages"

    # Read-your-writes: a tag written now is found by the very next query.
    registry.update_twin(ids[1], Twin(tags={"site": "moved"}), "*")
    moved = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.site = 'moved'"), None, 100)
    assert [twin.device_id for twin in moved.items] == [ids[1]]
