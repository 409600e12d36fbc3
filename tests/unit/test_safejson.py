"""The strict JSON decoder: every refusal is a ValidationError naming the field and the problem."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.safejson import BodyTooLargeError, JsonLimits, loads


def test_plain_json_round_trips() -> None:
    doc = {"a": [1, 2.5, "x", None, True], "b": {"c": "ü"}}
    assert loads(json.dumps(doc).encode()) == doc
    assert loads(json.dumps(doc)) == doc


def test_bom_is_accepted() -> None:
    assert loads(b"\xef\xbb\xbf[1]") == [1]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper"),
        (b"[" * 65 + b"]" * 65, "nested deeper"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "nested deeper"),
        (b"1" * 5000, "digits"),
        (b'{"n": 1e400}', "out of range"),
        (b'{"n": ' + b"1." + b"0" * 100 + b"}", "longer than"),
        (b'{"n": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"[-Infinity]", "Infinity"),
        (b'["\\ud800"]', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"\xff\xfe", "UTF-8"),
        (b"{", "not valid JSON"),
        (b"   ", "empty"),
    ],
)
def test_refusals_name_the_problem(body: bytes, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        loads(body, field="body")
    assert needle in info.value.message
    assert info.value.field == "body"


def test_depth_at_the_limit_is_fine() -> None:
    assert loads(b"[" * 64 + b"]" * 64) is not None


def test_size_limit_is_413() -> None:
    with pytest.raises(BodyTooLargeError) as info:
        loads(b"[" + b"1," * 100 + b"1]", limits=JsonLimits(max_bytes=50))
    assert info.value.status == 413


def test_a_valid_surrogate_pair_is_fine() -> None:
    assert loads(b'["\\ud83d\\ude00"]') == ["\U0001f600"]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(ValidationError):
        loads(data)


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ValidationError):
        loads(text)
