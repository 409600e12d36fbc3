"""The ``if:`` expression language: parsed once, evaluated strictly, never eval'd."""

from __future__ import annotations

from typing import Any

import pytest

from shared.flows import expr
from shared.flows.expr import ExprError, ExpressionError, evaluate, is_true, parse, references

SCOPE: dict[str, Any] = {
    "steps": {"quality": {"outputs": {"result": {"bad_rows": 0, "tags": ["a", "b"], "name": "q"}}}},
    "run": {"trigger_kind": "blob", "id": "r1"},
    "trigger": {"params": {"n": 3, "mode": "fast", "flag": True}},
}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("${steps.quality.outputs.result.bad_rows} == 0 and ${run.trigger_kind} != 'manual'", True),
        ("${trigger.params.n} > 2", True),
        ("${trigger.params.n} >= 3.0", True),
        ("${trigger.params.n} < -1", False),
        ("'a' in ${steps.quality.outputs.result.tags}", True),
        ("'z' not in ${steps.quality.outputs.result.tags}", True),
        ("${trigger.params.mode} in ['fast', 'slow']", True),
        ("'as' in 'fast'", True),
        ("'n' in ${trigger.params}", True),
        ("not (${trigger.params.flag} and false)", True),
        ("false or ${trigger.params.flag}", True),
        ("true and not true or true", True),  # not > and > or
        ("null == null", True),
        ("true == 1", False),  # a boolean never equals a number
        ('"it\\"s" == \'it"s\'', True),
        ("[1, 2] == [1, 2.0]", True),
        ("'b' < 'c'", True),
        ("false", False),
    ],
)
def test_evaluates(text: str, value: bool) -> None:
    assert is_true(parse(text), SCOPE) is value


def test_short_circuits_before_a_missing_reference() -> None:
    assert is_true(parse("false and ${steps.nope.outputs.x} == 1"), SCOPE) is False
    assert is_true(parse("true or ${steps.nope.outputs.x} == 1"), SCOPE) is True


@pytest.mark.parametrize(
    ("text", "needle", "column"),
    [
        ("${a.b} ==", "ends where a value is expected", 10),
        ("(1 == 1", "expected ')'", 8),
        ("1 == 1 1", "unexpected '1'", 8),
        ("manual == 'x'", "strings need quotes", 1),
        ("1 < 2 < 3", "cannot be chained", 7),
        ("1 === 1", "unexpected '='", 5),
        ("${a.b", "needs a closing '}'", 1),
        ("${a b} == 1", "malformed reference", 1),
        ("'unterminated", "strings need quotes", 1),
        ("", "empty", 1),
        ("and", "expected a value before 'and'", 1),
        ("__import__('os')", "unknown name '__import__'", 1),
    ],
)
def test_malformed_expressions_name_the_column(text: str, needle: str, column: int) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert needle in str(info.value)
    assert info.value.column == column


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("${trigger.params.n}", "needs true or false"),
        ("${trigger.params.n} and true", "needs true or false"),
        ("${trigger.params.mode} < 3", "cannot compare a string with a number"),
        ("1 in 2", "'in' needs a list"),
        ("1 in 'abc'", "needs a string on its left"),
        ("${steps.quality.outputs.result.missing} == 0", "no 'missing'"),
    ],
)
def test_evaluation_errors_are_clear(text: str, needle: str) -> None:
    with pytest.raises(ExpressionError) as info:
        is_true(parse(text), SCOPE)
    assert needle in info.value.message
    assert info.value.field == "if"


def test_untrusted_values_stay_data() -> None:
    """A value that looks like an expression is compared as text, never parsed or run."""
    scope = {"trigger": {"params": {"name": "x' or true or '"}}}
    assert is_true(parse("${trigger.params.name} == 'y'"), scope) is False
    assert evaluate(parse("${trigger.params.name}"), scope) == "x' or true or '"


def test_references_and_the_ast_is_cached() -> None:
    node = parse("${steps.a.outputs.x} == 1 or ${run.id} in [${steps.b.outputs.ids}]")
    assert references(node) == {"steps.a.outputs.x", "run.id", "steps.b.outputs.ids"}
    assert parse("${steps.a.outputs.x} == 1 or ${run.id} in [${steps.b.outputs.ids}]") is node
    assert isinstance(node, expr.Logic)
