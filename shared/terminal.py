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
  so they stay text on any console a caller hands in;
* control characters other than newline and tab (an ESC starting a terminal escape sequence
  in a task's output or a step error) are shown as ``\x1b``, never sent to the terminal.

:func:`log_to_console` shows the host's own log lines (engine events such as ``run ... step
score failed (attempt 1, 2.2s): ...``) as readable timestamped lines for ``conveyor up``.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Any

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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with control characters (but newline and tab) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def line(*parts: Part) -> Text:
    """One line of text: ``str`` parts literal, ``(text, style)`` parts styled, ``Text`` as is."""
    out = Text()
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            out.append(visible(part[0]), style=part[1])
        else:
            out.append(visible(part))
    return out


def cell(value: Any, style: str = "") -> Text:
    """A table cell or tree label holding ``value`` as text."""
    return Text(visible(value if isinstance(value, str) else str(value)), style=style)


def say(out: Console, *parts: Part) -> None:
    """Print one line built by :func:`line` (wrapped by the terminal, never re-flowed)."""
    out.print(line(*parts), soft_wrap=True)


class _ReadableFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors say so (tracebacks kept: they are bugs)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, rest = text.partition(" ")
            text = f"{stamp} {record.levelname.lower()}: {rest}"
        return text


def log_to_console(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Show Conveyor's own log lines (``conveyor.*``) on the terminal as readable lines.

    Only the ``conveyor`` logger: the Azure SDKs log every HTTP request at INFO.
    Returns the handler so the caller can remove it again.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_ReadableFormatter())
    logger = logging.getLogger("conveyor")
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or level, level))
    logger.propagate = False  # not twice through a root handler someone else configured
    return handler
