"""How the ``conveyor`` command writes to a terminal: every outside value reaches rich as text.

Run ids, flow names, trigger sources, step errors, outputs and telemetry attributes come from
outside (or from what outside input produced). rich reads ``[...]`` in a ``str`` as markup --
a step error ``... [blob] not found`` loses ``[blob]``, one with ``[/x]`` raises MarkupError --
and ``:name:`` as an emoji code. So there is one way to the terminal:

* the consoles made here have markup, emoji and highlighting off, so a ``str`` printed on
  them is shown exactly as it is;
* styling is applied only to spans of :class:`rich.text.Text`: :func:`line` joins parts into
  one ``Text`` where a plain ``str`` part is literal text and ``(text, style)`` styles it, and
  :func:`say` prints such a line. Table cells and tree labels are ``Text`` too (:func:`cell`),
  so they stay text on any console a caller hands in.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.text import Text

Part = str | Text | tuple[str, str]

# Without a terminal (CI, pipes) rich would wrap at 80 columns: URLs and ids read better wider.
WIDTH_WITHOUT_TERMINAL = 140


def make_console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A console that never interprets what it prints (no markup, emoji or highlighting)."""
    stream = sys.stderr if stderr else sys.stdout
    kwargs.setdefault("width", None if stream.isatty() else WIDTH_WITHOUT_TERMINAL)
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **kwargs)


def line(*parts: Part) -> Text:
    """One line of text: ``str`` parts literal, ``(text, style)`` parts styled, ``Text`` as is."""
    return Text.assemble(*parts)


def cell(value: Any, style: str = "") -> Text:
    """A table cell or tree label holding ``value`` as text."""
    return Text(value if isinstance(value, str) else str(value), style=style)


def say(out: Console, *parts: Part) -> None:
    """Print one line built by :func:`line` (wrapped by the terminal, never re-flowed)."""
    out.print(line(*parts), soft_wrap=True)
