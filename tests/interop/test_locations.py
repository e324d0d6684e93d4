"""Locations (docs/s2-compat.md §4.2, ADR 0009): one location, `local`, through the official SDK
and raw HTTP. Naming another location is refused and creates nothing; a malformed name is a JSON
error, as in S2."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from s2_sdk import S2, S2ServerError

from tests.server_process import ServerProcess


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield client


async def test_one_location_which_is_the_default(sdk: S2) -> None:
    locations = await sdk.list_locations()
    assert [(loc.name, loc.is_private) for loc in locations] == [("local", False)]
    assert locations[0].storage_classes == ["standard", "express"]
    assert locations[0].default_storage_class == "express"
    default = await sdk.get_default_location()
    assert (default.name, default.is_private) == ("local", False)
    assert (await sdk.set_default_location("local")).name == "local"
    assert (await sdk.get_default_location()).name == "local"


async def test_another_default_location_is_refused(sdk: S2) -> None:
    with pytest.raises(S2ServerError) as refused:
        await sdk.set_default_location("aws:us-east-1")
    assert (refused.value.status_code, refused.value.code) == (422, "invalid")
    assert "'aws:us-east-1'" in str(refused.value) and "'local'" in str(refused.value)
    assert (await sdk.get_default_location()).name == "local"


async def test_basins_are_created_in_the_local_location(sdk: S2, basin_name: str) -> None:
    created = await sdk.create_basin(basin_name, location="local")
    assert created.location == "local"
    ensured = await sdk.ensure_basin(basin_name + "-e", location="local")
    assert ensured.basin.location == "local"
    listed = await sdk.list_basins(prefix=basin_name)
    assert {b.location for b in listed.items} == {"local"}


@pytest.mark.parametrize("create", ["create_basin", "ensure_basin"])
async def test_a_basin_in_another_location_is_refused_and_not_created(
    sdk: S2, basin_name: str, create: str
) -> None:
    with pytest.raises(S2ServerError) as refused:
        await getattr(sdk, create)(basin_name, location="aws:us-east-1")
    assert (refused.value.status_code, refused.value.code) == (422, "invalid")
    assert "'local'" in str(refused.value)
    with pytest.raises(S2ServerError) as missing:
        await sdk.get_basin_config(basin_name)
    assert missing.value.code == "basin_not_found"


async def test_an_existing_basin_cannot_move(sdk: S2, basin_name: str) -> None:
    await sdk.create_basin(basin_name)
    with pytest.raises(S2ServerError) as refused:
        await sdk.ensure_basin(basin_name, location="elsewhere")
    assert (refused.value.status_code, refused.value.code) == (422, "invalid")
    assert (await sdk.list_basins(prefix=basin_name)).items[0].location == "local"


JSON_CT = {"content-type": "application/json"}
MALFORMED_LOCATIONS = [5, None, "", "a b", "aws/us-east-1", "é", "a" * 65, ["local"]]


@pytest.mark.parametrize("value", MALFORMED_LOCATIONS, ids=repr)
def test_a_malformed_default_location_is_bad_json(http: httpx.Client, value: object) -> None:
    response = http.put("/v1/locations/default", content=json.dumps(value), headers=JSON_CT)
    assert (response.status_code, response.json()["code"]) == (400, "bad_json"), response.text
    assert "location" in response.json()["message"]


@pytest.mark.parametrize("value", [v for v in MALFORMED_LOCATIONS if v is not None], ids=repr)
def test_a_malformed_basin_location_is_bad_json_and_creates_nothing(
    http: httpx.Client, basin_name: str, value: object
) -> None:
    created = http.post("/v1/basins", json={"basin": basin_name, "location": value})
    ensured = http.put(f"/v1/basins/{basin_name}", json={"location": value})
    for response in (created, ensured):
        assert (response.status_code, response.json()["code"]) == (400, "bad_json"), response.text
        assert "location" in response.json()["message"]
    assert http.get(f"/v1/basins/{basin_name}").status_code == 404


def test_a_null_basin_location_means_the_default(http: httpx.Client, basin_name: str) -> None:
    response = http.post("/v1/basins", json={"basin": basin_name, "location": None})
    assert response.status_code == 201 and response.json()["location"] == "local"
