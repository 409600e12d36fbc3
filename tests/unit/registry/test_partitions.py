"""Many models, the pure parts: the per-partition gate and how request rows are routed to partitions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.deploy.base import check_partition, check_partition_key, partition_of, partition_order
from shared.deploy.scoring.protocol import RequestError, parse_scoring_body, route_rows, unknown_partition
from shared.errors import ValidationError
from shared.registry.base import ModelVersion
from shared.registry.gate import PARTITION_TAG, decide_gate


def mv(name: str, version: str, r2: float, partition: str | None = None) -> ModelVersion:
    tags = {PARTITION_TAG: partition} if partition is not None else {}
    return ModelVersion(
        name=name, version=version, source_uri=f"file:///{name}/{version}", metrics={"r2": r2}, tags=tags
    )


# ---------------------------------------------------------------- the gate, per partition


def test_a_partition_gate_compares_with_that_partitions_champion_only() -> None:
    champion = mv("sales-7", "1", 0.8, "7")
    worse = decide_gate(mv("sales-7", "2", 0.7, "7"), champion, "r2", "maximize", partition="7")
    assert not worse.promote and worse.partition == "7" and worse.reason.startswith("partition 7: ")
    assert worse.as_tags()["partition"] == "7" and worse.as_dict()["partition"] == "7"
    better = decide_gate(mv("sales-7", "3", 0.9, "7"), champion, "r2", "maximize", partition="7")
    assert better.promote and better.champion_version == "1"
    first = decide_gate(mv("sales-8", "1", 0.1, "8"), None, "r2", "maximize", partition="8")
    assert first.promote and first.partition == "8"
    plain = decide_gate(mv("sales", "2", 0.9), mv("sales", "1", 0.8), "r2", "maximize")
    assert plain.partition is None and "partition" not in plain.as_tags()  # a single model: as before


def test_another_partitions_champion_or_candidate_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        decide_gate(mv("sales", "2", 0.9, "8"), mv("sales", "1", 0.5, "7"), "r2", "maximize", partition="8")
    assert (
        err.value.field == "params.partition" and "champion sales v1 is the model of partition '7'" in err.value.message
    )
    with pytest.raises(ValidationError, match="candidate sales v2 is the model of partition '8', not of '7'"):
        decide_gate(mv("sales", "2", 0.9, "8"), None, "r2", "maximize", partition="7")
    # models without the tag (registered before partitions existed) are taken to belong
    assert decide_gate(mv("sales-7", "2", 0.9), mv("sales-7", "1", 0.5), "r2", "maximize", partition="7").promote


@given(st.floats(0, 1), st.floats(0, 1))
def test_a_partition_decision_is_the_plain_decision_plus_its_partition(cand: float, champ: float) -> None:
    plain = decide_gate(mv("m", "2", cand), mv("m", "1", champ), "r2", "maximize")
    routed = decide_gate(mv("m", "2", cand, "p"), mv("m", "1", champ, "p"), "r2", "maximize", partition="p")
    assert (routed.promote, routed.candidate, routed.champion) == (plain.promote, plain.candidate, plain.champion)


# ---------------------------------------------------------------- partitions and keys


def test_partition_values_name_one_partition_whatever_their_json_type() -> None:
    assert partition_of(7) == partition_of(7.0) == partition_of("7") == "7"
    assert partition_of("S-001") == "S-001"
    for bad in (True, 7.5, float("inf"), None, [7], {"a": 1}):
        assert partition_of(bad) is None
    assert sorted(["10", "2", "b", "1", "a"], key=partition_order) == ["1", "2", "10", "a", "b"]
    assert sorted(["²", "1"], key=partition_order) == ["1", "²"]  # not an ASCII number: text


def test_partitions_and_keys_are_bounded_words() -> None:
    assert check_partition("store=7") == "store=7"
    for bad in ("", "-7", "7 8", "a/b", "x" * 129, "\n7", 7):
        with pytest.raises(ValidationError) as err:
            check_partition(bad)
        assert err.value.field == "params.partition"
    assert check_partition_key("store") == "store"
    for bad in ("", "7store", "store id", "a.b"):
        with pytest.raises(ValidationError):
            check_partition_key(bad)


# ---------------------------------------------------------------- routing rows


def route(body: Any, served: set[str] | None = None) -> list[str]:
    served = {"1", "2", "3"} if served is None else served
    table = parse_scoring_body(body)
    return route_rows(
        table,
        "store",
        served.__contains__,
        lambda p, f: unknown_partition("ep", p, f, sorted(served, key=partition_order)),
    )


def test_rows_are_routed_by_their_key_column_in_every_format() -> None:
    rows = [{"store": 2, "x": 1}, {"store": "1", "x": 2}, {"store": 3.0, "x": 3}]
    assert route({"rows": rows}) == ["2", "1", "3"]
    assert route({"dataframe_records": rows}) == ["2", "1", "3"]
    assert route({"dataframe_split": {"columns": ["store", "x"], "data": [[2, 1], [1, 2]]}}) == ["2", "1"]
    assert route({"inputs": {"x": [1, 2], "store": [3, 3]}}) == ["3", "3"]


def test_params_partition_routes_rows_without_the_column_and_fills_it_in() -> None:
    table = parse_scoring_body({"instances": [{"x": 1}, {"x": 2}], "params": {"partition": 2}})
    assert route_rows(table, "store", {"2"}.__contains__, lambda p, f: RequestError(404, p, f)) == ["2", "2"]
    assert table.rows == [{"x": 1, "store": 2}, {"x": 2, "store": 2}]
    assert route({"rows": [{"store": 2}], "params": {"partition": "2"}}) == ["2"]  # agreeing is fine


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (
            {"rows": [{"store": 1}, {"store": 9}]},
            404,
            "rows[1].store",
            "serves no partition '9' (it serves 3: 1, 2, 3)",
        ),
        ({"dataframe_split": {"columns": ["x", "store"], "data": [[0, 9]]}}, 404, "dataframe_split.data[0][1]", "'9'"),
        ({"rows": [{"x": 1}], "params": {"partition": "9"}}, 404, "params.partition", "'9'"),
        ({"rows": [{"x": 1}]}, 400, "rows[0].store", "missing the partition key column 'store'"),
        ({"dataframe_split": {"columns": ["x"], "data": [[1]]}}, 400, "dataframe_split.columns", "'store'"),
        ({"rows": [{"store": True}]}, 400, "rows[0].store", "text or an integer"),
        ({"rows": [{"store": 1.5}]}, 400, "rows[0].store", "text or an integer"),
        ({"rows": [{"store": [1]}]}, 400, "rows[0].store", "text or an integer"),
        ({"rows": [{"store": 1}], "params": {"partition": {"a": 1}}}, 400, "params.partition", "text or an integer"),
        ({"rows": [{"store": 1}], "params": {"partition": "2"}}, 400, "rows[0].store", "params.partition is '2'"),
    ],
)
def test_routing_refusals_name_the_field(body: Any, status: int, field: str, words: str) -> None:
    with pytest.raises(RequestError) as err:
        route(body)
    assert (err.value.status, err.value.field) == (status, field)
    assert words in err.value.message
    if status == 404:
        assert err.value.code == "unknown_partition"


def test_an_unknown_partition_message_lists_a_bounded_number_of_served_ones() -> None:
    served = {str(n) for n in range(1, 500)}
    with pytest.raises(RequestError) as err:
        route({"rows": [{"store": "x" * 300}]}, served)
    assert "it serves 499: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …" in err.value.message
    assert len(err.value.message) < 200  # the request's value is cut too
