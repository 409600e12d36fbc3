"""The ``if:`` language: a small, safe expression language, parsed once into an AST.

A step's ``if`` is parsed when flows.yaml is loaded (a bad expression is a validation error
with its column) and evaluated by the engine against the run's values; nothing is ever
handed to ``eval``. The grammar, loosest binding first::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := operand (('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') operand)?
    operand := literal | '${' path '}' | '(' expr ')' | '[' (expr (',' expr)*)? ']'
    literal := 'string' | "string" | number | true | false | null

Evaluation is strict, so a mistake is an error rather than a silent ``false``: ``and``,
``or``, ``not`` and the whole expression need booleans; ``<``-style comparisons need two
numbers or two strings; ``in`` needs a list, a string (substring) or a mapping (keys) on its
right; a boolean never equals a number. Values come from the same ``${...}`` scope as step
params (shared.flows.template), so a reference to an output that does not exist is an error
naming it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ValidationError

__all__ = [
    "Compare",
    "ExprError",
    "ExpressionError",
    "ListOf",
    "Literal",
    "Logic",
    "Node",
    "Not",
    "Ref",
    "evaluate",
    "is_true",
    "parse",
    "references",
]

# ---------------------------------------------------------------- the AST


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Ref:
    path: str  # normalised, e.g. steps.quality.outputs.result.bad_rows


@dataclass(frozen=True)
class ListOf:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Logic:
    op: str  # and | or
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare:
    op: str  # == != < <= > >= in "not in"
    left: Node
    right: Node


Node = Literal | Ref | ListOf | Not | Logic | Compare


class ExprError(ValueError):
    """A malformed expression; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.column = column


class ExpressionError(ValidationError):
    """An expression could not be evaluated against the run's values."""


# ---------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<ref>\$\{[^}]*\})
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_WORDS = {"true": True, "false": False, "null": None}
_KEYWORDS = ("and", "or", "not", "in")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
_MAX_LENGTH = 4000
_MAX_DEPTH = 50


@dataclass(frozen=True)
class _Tok:
    kind: str  # ref string number op word end
    text: str
    col: int


def _unquote(text: str, col: int) -> str:
    out: list[str] = []
    i, body = 0, text[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise ExprError(f"unknown escape \\{nxt} in a string", col + i + 1)
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = " (strings need quotes: 'like this')" if ch.isalpha() or ch in "'\"" else ""
            if text.startswith("${", pos):
                hint = " ('${' needs a closing '}')"
            raise ExprError(f"unexpected {ch!r}{hint}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "space":
            out.append(_Tok(kind, m.group(0), pos + 1))
        pos = m.end()
    out.append(_Tok("end", "", len(text) + 1))
    return out


# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text == word

    def expect(self, text: str, what: str) -> None:
        tok = self.take()
        if tok.text != text or tok.kind not in ("op",):
            raise ExprError(f"expected {what}, found {_describe(tok)}", tok.col)

    def parse(self) -> Node:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {_describe(tok)} (missing 'and'/'or'?)", tok.col)
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ExprError("expression nested too deeply", self.peek().col)
        node = self.conj()
        while self.at_word("or"):
            self.take()
            node = Logic("or", node, self.conj())
        self.depth -= 1
        return node

    def conj(self) -> Node:
        node = self.neg()
        while self.at_word("and"):
            self.take()
            node = Logic("and", node, self.neg())
        return node

    def neg(self) -> Node:
        if self.at_word("not"):
            self.take()
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise ExprError("expression nested too deeply", self.peek().col)
            node = Not(self.neg())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self) -> Node:
        left = self.operand()
        tok = self.peek()
        op: str | None = None
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            op = self.take().text
        elif self.at_word("in"):
            self.take()
            op = "in"
        elif self.at_word("not") and self.toks[self.i + 1].kind == "word" and self.toks[self.i + 1].text == "in":
            self.i += 2
            op = "not in"
        if op is None:
            return left
        right = self.operand()
        nxt = self.peek()
        if nxt.kind == "op" and nxt.text in ("==", "!=", "<", "<=", ">", ">="):
            raise ExprError("comparisons cannot be chained; join them with 'and'", nxt.col)
        return Compare(op, left, right)

    def operand(self) -> Node:
        tok = self.take()
        if tok.kind == "ref":
            return Ref(_ref_path(tok.text, tok.col))
        if tok.kind == "string":
            return Literal(_unquote(tok.text, tok.col))
        if tok.kind == "number":
            number = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            if isinstance(number, float) and not math.isfinite(number):
                raise ExprError(f"number out of range: {tok.text}", tok.col)
            return Literal(number)
        if tok.kind == "word":
            if tok.text in _WORDS:
                return Literal(_WORDS[tok.text])
            if tok.text in _KEYWORDS:
                raise ExprError(f"expected a value before {tok.text!r}", tok.col)
            raise ExprError(f"unknown name {tok.text!r} (strings need quotes: '{tok.text}')", tok.col)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect(")", "')'")
            return node
        if tok.kind == "op" and tok.text == "[":
            items: list[Node] = []
            if not (self.peek().kind == "op" and self.peek().text == "]"):
                items.append(self.expr())
                while self.peek().kind == "op" and self.peek().text == ",":
                    self.take()
                    items.append(self.expr())
            self.expect("]", "']' or ','")
            return ListOf(tuple(items))
        if tok.kind == "end":
            raise ExprError("the expression ends where a value is expected", tok.col)
        raise ExprError(f"expected a value, found {_describe(tok)}", tok.col)


def _describe(tok: _Tok) -> str:
    return "the end" if tok.kind == "end" else repr(tok.text)


def _ref_path(token: str, col: int) -> str:
    from shared.flows.template import TemplateError
    from shared.flows.template import references as template_references

    try:
        found = template_references(token)
    except TemplateError as exc:
        raise ExprError(exc.message, col) from None
    if len(found) != 1:
        raise ExprError(f"malformed reference {token}", col)
    return next(iter(found))


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Node:
    """Parse an ``if`` expression into its AST; :class:`ExprError` (with the column) if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("the expression is empty", 1)
    if len(text) > _MAX_LENGTH:
        raise ExprError(f"the expression is longer than {_MAX_LENGTH} characters", _MAX_LENGTH)
    return _Parser(text).parse()


def references(node: Node) -> set[str]:
    """Every ``${...}`` path the expression reads (normalised)."""
    if isinstance(node, Ref):
        return {node.path}
    if isinstance(node, ListOf):
        return set().union(*(references(n) for n in node.items)) if node.items else set()
    if isinstance(node, Not):
        return references(node.operand)
    if isinstance(node, Logic | Compare):
        return references(node.left) | references(node.right)
    return set()


# ---------------------------------------------------------------- evaluation


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, Sequence):
        return "list"
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b) or (isinstance(a, Mapping) and isinstance(b, Mapping) and a == b)


def _order(op: str, a: Any, b: Any) -> bool:
    numbers = _kind(a) == "number" and _kind(b) == "number"
    strings = isinstance(a, str) and isinstance(b, str)
    if not (numbers or strings):
        raise ExpressionError(f"cannot compare a {_kind(a)} with a {_kind(b)} using {op}", field="if")
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _contains(a: Any, b: Any) -> bool:
    if isinstance(b, str):
        if not isinstance(a, str):
            raise ExpressionError(f"'in' a string needs a string on its left, got a {_kind(a)}", field="if")
        return a in b
    if isinstance(b, Mapping):
        return any(_equal(a, k) for k in b)
    if isinstance(b, Sequence):
        return any(_equal(a, item) for item in b)
    raise ExpressionError(f"'in' needs a list, string or mapping on its right, got a {_kind(b)}", field="if")


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"{what} needs true or false, got a {_kind(value)} ({str(value)[:40]!r})", field="if")
    return value


def evaluate(node: Node, scope: Mapping[str, Any]) -> Any:
    """The value of ``node`` against ``scope`` (the ``${...}`` scope); :class:`ExpressionError` if it cannot."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Ref):
        from shared.flows.template import TemplateError, render_string

        try:
            return render_string("${" + node.path + "}", scope, field="if")
        except TemplateError as exc:
            raise ExpressionError(exc.message, field="if") from None
    if isinstance(node, ListOf):
        return [evaluate(n, scope) for n in node.items]
    if isinstance(node, Not):
        return not _bool(evaluate(node.operand, scope), "'not'")
    if isinstance(node, Logic):
        left = _bool(evaluate(node.left, scope), f"{node.op!r}")
        if node.op == "and" and not left:
            return False
        if node.op == "or" and left:
            return True
        return _bool(evaluate(node.right, scope), f"{node.op!r}")
    a, b = evaluate(node.left, scope), evaluate(node.right, scope)
    if node.op == "==":
        return _equal(a, b)
    if node.op == "!=":
        return not _equal(a, b)
    if node.op == "in":
        return _contains(a, b)
    if node.op == "not in":
        return not _contains(a, b)
    return _order(node.op, a, b)


def is_true(node: Node, scope: Mapping[str, Any]) -> bool:
    """Evaluate a condition: it must come out true or false."""
    return _bool(evaluate(node, scope), "an 'if' expression")
