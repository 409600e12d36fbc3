"""Which paths of the local host are the web console's (no other import: the socket layer reads it)."""

from __future__ import annotations

CONSOLE_PREFIXES = ("/runs/", "/models", "/dead-letters", "/static/")


def is_console_path(path: str) -> bool:
    """True for the paths the local host hands to the console (``/``, runs, models, dead letters, static)."""
    low = path.lower()
    return low in ("", "/") or any(low.startswith(p) or low == p.rstrip("/") for p in CONSOLE_PREFIXES)
