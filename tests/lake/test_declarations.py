"""A materialization's declaration in its HTTP JSON form: the JSON types are checked where the
JSON is read (server/http_frontend/lake_json.py), the meaning where every frontend's
declarations go (server/lake/definition.py); each refusal names what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from s2s.errors import S2Error
from server.http_frontend.lake_json import spec_from_json
from server.lake.definition import INGEST_BASIN, Materialization, build_materialization


def declare(**body: Any) -> Materialization:
    return build_materialization(spec_from_json({"name": "m", "table": "s.t", **body}))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": 5}, "name must be 1-128 characters"),
        ({"name": "no spaces"}, "name must be 1-128 characters"),
        ({"table": None}, "table is required: 'schema.table'"),
        ({"table": "nodot"}, "table 'nodot': expected 'schema.table'"),
        ({"basin": 5}, "basin and stream must be strings"),
        ({"stream": ["x"]}, "basin and stream must be strings"),
        ({"mode": 5}, "mode must be one of append, merge, not 5"),
        ({"mode": "upsert"}, "mode must be one of append, merge, not 'upsert'"),
        ({"primary_key": ["a", "b"]}, "primary_key must name exactly one column"),
        ({"mode": "merge"}, "merge mode needs primary_key: the one column to upsert on"),
        ({"mode": "merge", "primary_key": 5}, "merge mode needs primary_key"),
        ({"partition_by": 5}, "partition_by must be a list of column names"),
        ({"partition_by": ["a", 1]}, "partition_by must be a list of column names"),
        ({"partition_by": "a; b"}, "partition_by must be a single SQL expression list"),
        ({"create_table": "yes"}, "create_table must be true or false"),
        ({"paused": None}, "paused must be true or false"),
        ({"select": 5}, "select must be a string of DuckDB SQL"),
        ({"where": "a; b"}, "where must be a single SQL expression list, without ';'"),
    ],
)
def test_a_bad_declaration_is_refused_saying_why(body: dict[str, Any], message: str) -> None:
    with pytest.raises(S2Error) as info:
        declare(**body)
    assert info.value.code == "invalid"
    assert info.value.message.startswith(message), info.value.message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(S2Error) as info:
        spec_from_json(["m"])
    assert info.value.message == "body must be a JSON object: the materialization's declaration"


def test_unset_and_empty_fields_take_their_defaults() -> None:
    definition = declare(basin="", stream=None, mode="", select="", primary_key=5)
    assert (definition.basin, definition.stream, definition.mode) == (INGEST_BASIN, "s.t", "append")
    assert (definition.select, definition.primary_key) == (None, None)  # only merge has a key


def test_the_json_conveniences_are_accepted() -> None:
    definition = declare(mode="merge", primary_key=["k"], partition_by="kind, year(ts)")
    assert definition.primary_key == "k"
    assert definition.partition_by == ["kind", "year(ts)"]
