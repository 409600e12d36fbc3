"""Argv templates: the one rule for every place a template meets a command line.

A command is a list of argument words (argv); it never goes through a shell.

- A list ``command`` is taken word by word. A string ``command`` is split into words by the
  POSIX shell's quoting rules, exactly as ``shlex.split`` does (quotes group and are removed,
  backslash escapes), once, when flows.yaml is loaded: :func:`command_problems` reports what
  cannot be split or would not mean what it says, and the same split is used at launch.
- In each word two kinds of slot are found once, in the template: ``${path}`` (the run's
  template scope: ``${trigger.blob.name}``, ``${steps.etl.outputs.result}``...) and
  ``{name}`` (what a backend knows per task: ``{input}``, ``{output_dir}``...; see
  :data:`TASK_PLACEHOLDERS`). ``$${`` is a literal ``${``.
- :meth:`ArgvTemplate.render` fills every slot of every word in one pass from values. A
  value's text is copied into its word and never scanned again: it is never split into
  words, merged with another word, parsed by a shell or templated a second time. A slot
  fills exactly one word, or part of one word (``--name={input_name}``), still one word.

What a string command may not contain (reported by ``conveyor validate``, with the fix):
slots written inside quotes (``'{input_name}'``: the quotes are not needed, and under a
shell they were what let a value out), shell syntax (``>``, ``|``, ``;``, ``$VAR``,
backticks: there is no shell; run one explicitly, ``[sh, -c, 'cmd "$1"', sh, '{input}']``),
a slot in the program word (a value never chooses the program) or in the script word of
``sh -c`` / ``python -c`` (a script is code: pass values as its arguments). Unknown
placeholders, empty commands and NUL bytes are refused in both forms.

Azure ML pipeline commands (``${{inputs.x}}``, ``${{outputs.y}}``) follow the same rule
through ``syntax="azureml"``: :func:`parse_command` then yields ``expr`` slots.

The words come from a small tokenizer, not from ``shlex.split`` itself, because shlex does
not say which characters were quoted; tests check that both give the same words.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import ValidationError
from shared.flows.template import TemplateError, lookup, normalize_reference, render, render_text, to_text

__all__ = [
    "TASK_PLACEHOLDERS",
    "ArgvTemplate",
    "Slot",
    "command_line",
    "command_problems",
    "parse_command",
    "render_argv",
    "render_env",
    "render_step_params",
    "shell_word",
    "split_words",
]

# What a batch command's {placeholders} are filled with, per task (both Batch backends fill all).
TASK_PLACEHOLDERS = ("input", "input_name", "input_blob", "input_url", "output_dir", "task_index", "task_id")

Syntax = Literal["conveyor", "azureml"]
SlotKind = Literal["ref", "placeholder", "expr"]

_WHITESPACE = " \t\r\n"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SHELL_OPERATORS = frozenset("|&;<>()`")
_SHELL_PARAM_START = re.compile(r"[A-Za-z_0-9?#@*!$({-]")
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh"})
_PYTHON = re.compile(r"^python[0-9.]*$")
_SHELL_C_FLAG = re.compile(r"^-[A-Za-z]*c[A-Za-z]*$")
_PLAIN_WORD = re.compile(r"^[\w@%+=:,./{}$-]+$")


@dataclass(frozen=True)
class Slot:
    """One slot of a word: ``ref`` (``${path}``), ``placeholder`` (``{name}``) or ``expr``
    (Azure ML's ``${{inputs.x}}``). ``name`` is the normalised path, name or expression."""

    kind: SlotKind
    name: str

    def __str__(self) -> str:
        if self.kind == "ref":
            return "${" + self.name + "}"
        if self.kind == "expr":
            return "${{" + self.name + "}}"
        return "{" + self.name + "}"


Part = str | Slot
Word = tuple[Part, ...]


@dataclass(frozen=True)
class ArgvTemplate:
    """A parsed command: its words, each a sequence of literal text and slots."""

    words: tuple[Word, ...]
    field: str = "params.command"

    def render(self, resolve: Callable[[Slot], str]) -> list[str]:
        """The argv: every slot replaced by ``resolve(slot)``, in one pass, never re-scanned."""
        argv: list[str] = []
        for n, word in enumerate(self.words):
            text = "".join(p if isinstance(p, str) else resolve(p) for p in word)
            if "\x00" in text:
                raise ValidationError(f"word {n + 1} of the command would contain a NUL byte", field=self.field)
            argv.append(text)
        return argv

    def argv(self, scope: Mapping[str, Any], values: Mapping[str, str] | None = None) -> list[str]:
        """The argv for a run's template ``scope`` and a task's placeholder ``values``."""
        vals = values or {}

        def resolve(slot: Slot) -> str:
            if slot.kind == "ref":
                return to_text(lookup(scope, slot.name, self.field))
            if slot.name not in vals:
                known = ", ".join("{" + k + "}" for k in sorted(vals)) or "none"
                raise ValidationError(f"no value for {slot} (known: {known})", field=self.field)
            return str(vals[slot.name])

        return self.render(resolve)


# ---------------------------------------------------------------- splitting


Quoted = Literal["", "'", '"', "\\"]
Char = tuple[str, Quoted]


def split_words(text: str, *, atomic_refs: bool = True) -> list[list[Char]]:
    """Split ``text`` into words as ``shlex.split`` does, keeping how each character was quoted
    (``""`` unquoted, ``"'"``/``'"'`` inside those quotes, ``"\\\\"`` backslash-escaped).

    With ``atomic_refs``, an unquoted ``${...}`` / ``${{...}}`` is kept in one word even when
    it holds spaces. Raises ValueError for an unclosed quote or a trailing backslash.
    """
    words: list[list[Char]] = []
    word: list[Char] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            if in_word:
                words.append(word)
                word, in_word = [], False
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("the command ends with a backslash that escapes nothing")
            word.append((text[i + 1], "\\"))
            in_word = True
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("a single quote (') is not closed")
            word.extend((ch, "'") for ch in text[i + 1 : end])
            in_word = True
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError('a double quote (") is not closed')
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    word.append((text[i + 1], '"'))
                    i += 2
                    continue
                word.append((ch, '"'))
                i += 1
            in_word = True
        elif atomic_refs and text.startswith("${", i):
            close = "}}" if text.startswith("${{", i) else "}"
            end = text.find(close, i + 2)
            stop = n if end < 0 else end + len(close)
            word.extend((ch, "") for ch in text[i:stop])
            in_word = True
            i = stop
        else:
            word.append((c, ""))
            in_word = True
            i += 1
    if in_word:
        words.append(word)
    return words


# ---------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, syntax: Syntax, placeholders: Collection[str] | None, shell_words: bool) -> None:
        self.syntax = syntax
        self.placeholders = placeholders
        self.shell_words = shell_words  # a string command: shell syntax would be silently literal
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def slot(self, inner: str, n: int) -> Slot | None:
        """The slot written ``${inner}`` (``${{inner}}`` for Azure ML); None (a problem noted) if malformed."""
        if self.syntax == "azureml":
            return Slot("expr", inner.strip())
        try:
            return Slot("ref", normalize_reference(inner, "command"))
        except TemplateError as exc:
            self.problem(f"word {n}: {exc.message}")
            return None

    def word(self, chars: Sequence[Char], n: int) -> Word:
        text = "".join(c for c, _ in chars)
        quoted = [q for _, q in chars]
        parts: list[Part] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                parts.append("".join(buf))
                buf.clear()

        def add(slot: Slot) -> None:
            flush()
            parts.append(slot)

        opener, closer = ("${{", "}}") if self.syntax == "azureml" else ("${", "}")
        i, size = 0, len(text)
        while i < size:
            if self.syntax == "conveyor" and text.startswith("$${", i):
                buf.append("${")
                i += 3
                continue
            if text.startswith(opener, i):
                end = text.find(closer, i + len(opener))
                if end < 0:
                    hint = " (write '$${' for a literal '${')" if self.syntax == "conveyor" else ""
                    self.problem(f"word {n}: {opener!r} needs a closing {closer!r}{hint}")
                    buf.append(text[i:])
                    break
                slot = self.slot(text[i + len(opener) : end], n)
                if slot is not None and any(quoted[i : end + len(closer)]):
                    self.problem(_quoted_message(slot, chars))
                elif slot is not None:
                    add(slot)
                i = end + len(closer)
                continue
            m = _PLACEHOLDER.match(text, i) if self.placeholders is not None else None
            if m is not None:
                assert self.placeholders is not None
                name = m.group(1)
                unquoted = not any(quoted[i : m.end()])
                if name in self.placeholders:
                    if unquoted:
                        add(Slot("placeholder", name))
                    else:
                        self.problem(_quoted_message(Slot("placeholder", name), chars))
                    i = m.end()
                    continue
                if unquoted:
                    known = ", ".join("{" + k + "}" for k in self.placeholders) or "none"
                    self.problem(f"unknown placeholder {{{name}}} (known: {known})")
                    i = m.end()
                    continue
            if self.shell_words and _is_shell_syntax(text, quoted, i):
                self.problem(_shell_message(text[i], self.syntax))
            buf.append(text[i])
            i += 1
        flush()
        return tuple(parts)


def _is_shell_syntax(text: str, quoted: list[Quoted], i: int) -> bool:
    c, q = text[i], quoted[i]
    if q in ("'", "\\"):
        return False
    if c == "`":
        return True
    if c == "$" and i + 1 < len(text) and quoted[i + 1] == q and _SHELL_PARAM_START.match(text[i + 1]):
        return True
    return q == "" and c in _SHELL_OPERATORS


def _shell_message(c: str, syntax: Syntax) -> str:
    what = "an Azure ML command runs locally" if syntax == "azureml" else "the command runs"
    return (
        f"{c!r} is shell syntax, but {what} without a shell (as a list of arguments), so it would reach "
        "the program as text: quote it to mean the text, or run a shell yourself with the values as its "
        "arguments: [sh, -c, 'cmd \"$1\" > out', sh, '{input}']"
    )


def _quoted_message(slot: Slot, chars: Sequence[Char]) -> str:
    bare = "".join(c for c, _ in chars)
    fix = f": write {bare}" if _PLAIN_WORD.match(bare) else f": move {slot} out of the quoted text"
    return (
        f"{slot} is written inside quotes; a slot fills exactly one argument by itself (its value is never "
        f"split or parsed), so remove the quotes{fix}"
    )


def _program(words: Sequence[Word]) -> tuple[str, int]:
    """The program's base name and the index of its word (after ``env [-opts] [VAR=val]``)."""
    k = 0
    if os.path.basename(_lit(words[0])) == "env":
        k = 1
        while k < len(words) and (_lit(words[k]).startswith("-") or "=" in _lit(words[k])):
            k += 1
    return (os.path.basename(_lit(words[k])) if k < len(words) else ""), k


def _lit(word: Word) -> str:
    return word[0] if len(word) == 1 and isinstance(word[0], str) else ""


def _script_index(words: Sequence[Word]) -> int | None:
    """Index of the inline-script word of ``sh -c SCRIPT`` / ``python -c SCRIPT``, if any."""
    prog, k = _program(words)
    if prog in _SHELLS:
        for j in range(k + 1, len(words)):
            if _SHELL_C_FLAG.match(_lit(words[j])):
                for s in range(j + 1, len(words)):
                    lit = _lit(words[s])
                    if not (lit.startswith("-") and len(lit) > 1 and lit != "--"):
                        return s + 1 if lit == "--" and s + 1 < len(words) else s
                return None
            if not _lit(words[j]).startswith("-"):
                return None
    elif _PYTHON.match(prog):
        for j in range(k + 1, len(words)):
            word = words[j]
            lit = word[0] if word and isinstance(word[0], str) else ""  # the literal text the word starts with
            if lit == "-c" and len(word) == 1:
                return j + 1 if j + 1 < len(words) else None
            if lit.startswith("-c"):
                return j
            if not lit.startswith("-") or lit in ("-m", "--"):
                return None
    return None


def _parse(
    command: Any, *, syntax: Syntax, placeholders: Collection[str] | None
) -> tuple[ArgvTemplate | None, list[str]]:
    raw: list[list[Char]]
    if isinstance(command, str):
        p = _Parser(syntax, placeholders, shell_words=True)
        if "\x00" in command:
            return None, [f"contains a NUL byte (at character {command.index(chr(0)) + 1})"]
        try:
            raw = split_words(command)
        except ValueError as exc:
            return None, [str(exc)]
    elif isinstance(command, (list, tuple)):
        p = _Parser(syntax, placeholders, shell_words=False)
        raw = []
        for n, item in enumerate(command):
            if not isinstance(item, str):
                return None, [f"word {n + 1} must be text, got {type(item).__name__}"]
            if "\x00" in item:
                return None, [f"word {n + 1} contains a NUL byte"]
            raw.append([(c, "") for c in item])
    else:
        return None, [f"must be text or a list of words, got {type(command).__name__}"]
    if not raw:
        return None, ["empty command: give the program to run and its arguments"]
    words = tuple(p.word(chars, n + 1) for n, chars in enumerate(raw))
    if not words[0] or words[0] == ("",):
        p.problem("the first word (the program to run) is empty")
    _prog, k = _program(words)
    if k < len(words) and any(isinstance(part, Slot) for part in words[k]):
        p.problem("the program (first word) comes from a slot; a value must never choose the program: write it out")
    s = _script_index(words)
    if s is not None and s < len(words) and any(isinstance(part, Slot) for part in words[s]):
        slot = next(part for part in words[s] if isinstance(part, Slot))
        p.problem(
            f"{slot} is inside the inline script of {_lit(words[k]) or 'the program'} (word {s + 1}), which is "
            "code: pass the value as an argument after the script and use it there "
            "(e.g. [sh, -c, 'cat \"$1\"', sh, '{input}'] or [python, -c, 'import sys; print(sys.argv[1])', '{input}'])"
        )
    return ArgvTemplate(words), p.problems


def command_problems(
    command: Any, *, syntax: Syntax = "conveyor", placeholders: Collection[str] | None = TASK_PLACEHOLDERS
) -> list[str]:
    """Every problem of a command template, one message each (empty when it is usable)."""
    return _parse(command, syntax=syntax, placeholders=placeholders)[1]


def parse_command(
    command: Any,
    *,
    field: str = "params.command",
    syntax: Syntax = "conveyor",
    placeholders: Collection[str] | None = TASK_PLACEHOLDERS,
) -> ArgvTemplate:
    """The :class:`ArgvTemplate` of a command; ValidationError naming ``field`` when it has problems."""
    template, problems = _parse(command, syntax=syntax, placeholders=placeholders)
    if problems or template is None:
        raise ValidationError("; ".join(problems), field=field)
    return ArgvTemplate(template.words, field)


def render_argv(
    command: Any,
    scope: Mapping[str, Any],
    values: Mapping[str, str] | None = None,
    *,
    field: str = "params.command",
    placeholders: Collection[str] | None = TASK_PLACEHOLDERS,
) -> list[str]:
    """Parse ``command`` and fill it from a template ``scope`` (``${...}``) and ``values``
    (``{placeholder}``) in one pass: the argv to run. Callers with more roots (``${item}``)
    add them to ``scope``."""
    return parse_command(command, field=field, placeholders=placeholders).argv(scope, values)


def shell_word(value: str) -> str:
    """``value`` as exactly one word of a shell command line that a service builds by pasting it
    in (Azure ML's ``${{inputs.x}}``): shlex-quoted, unchanged when it has nothing to quote."""
    return shlex.quote(value)


def command_line(argv: Sequence[str], setup: str = "") -> str:
    """One command-line string for services that take a string (Azure Batch): ``/bin/sh -c
    '<setup>exec "$@"' conveyor-task <word>...`` with every word shlex-quoted. The shell runs
    only ``setup`` (ours, no values in it) and then executes the argv from its positional
    parameters, which it never parses: each word arrives as exactly one argument."""
    return shlex.join(["/bin/sh", "-c", f'{setup}exec "$@"', "conveyor-task", *argv])


# ---------------------------------------------------------------- step params at launch

# Params of these step kinds that reach a process as argv words or as the values of words.
# Each item / value is rendered to exactly one string (``${...}`` embedded or alone, never a
# typed value that a backend could split): Databricks ``parameters`` are the script's
# argv, Azure ML ``inputs`` fill the pipeline command's ``${{inputs.x}}``.
_TEXT_FIELDS: dict[str, tuple[str, ...]] = {"databricks": ("parameters",), "azureml": ("inputs",)}
# Params left as templates for the backend, which renders them with the run's scope and each
# task's values in one pass (a batch command's ``${...}`` and ``{placeholder}`` slots).
_DEFERRED_FIELDS: dict[str, tuple[str, ...]] = {"batch": ("command",)}


def render_step_params(kind: str, params: Mapping[str, Any], scope: Mapping[str, Any]) -> dict[str, Any]:
    """A step's params as launched: ``${...}`` rendered (shared.flows.template) except the
    fields the backend renders itself (a batch ``command``: :class:`ArgvTemplate`), and the
    fields that become argv words rendered to one string per item."""
    deferred = {k: params[k] for k in _DEFERRED_FIELDS.get(kind, ()) if k in params}
    text = {k: params[k] for k in _TEXT_FIELDS.get(kind, ()) if k in params}
    rest = {k: v for k, v in params.items() if k not in deferred and k not in text}
    out: dict[str, Any] = render(rest, scope, field="params")
    for key, value in text.items():
        out[key] = _render_text_items(value, scope, f"params.{key}")
    out.update(deferred)
    return {k: out[k] for k in params}


def _render_text_items(value: Any, scope: Mapping[str, Any], field: str) -> Any:
    if isinstance(value, str):
        return render_text(value, scope, field=field)
    if isinstance(value, Mapping):
        return {k: _render_text_items(v, scope, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render_text_items(v, scope, f"{field}[{i}]") for i, v in enumerate(value)]
    return to_text(value)


def render_env(env: Mapping[str, str] | None, scope: Mapping[str, Any]) -> dict[str, str]:
    """A step's ``env:`` as launched: each value one string, ``${...}`` filled by the same rule."""
    return {str(k): render_text(str(v), scope, field=f"env.{k}") for k, v in (env or {}).items()}
