"""A ``dbutils`` builtin for Databricks-style scripts run locally by LocalDatabricksBackend.

This directory is put first on the child's PYTHONPATH, so Python imports this module at
start-up (``site`` imports ``sitecustomize``). Notebook-style code that uses the bare name
``dbutils`` then works unchanged:

- ``dbutils.notebook.exit(value)`` writes ``str(value)`` to the file named by
  ``CONVEYOR_TASK_DBUTILS_EXIT_FILE`` and ends the script with exit code 0;
- ``dbutils.widgets.get(name)`` returns the value after ``--name`` (or ``--name=value``) in
  ``sys.argv``, else a default set by ``dbutils.widgets.text(name, default)``; ValueError
  when neither exists.

Nothing is installed unless ``CONVEYOR_TASK_DBUTILS_EXIT_FILE`` is set, and another
``sitecustomize`` further down sys.path still runs.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Any, NoReturn


class _Notebook:
    def exit(self, value: Any) -> NoReturn:
        path = os.environ.get("CONVEYOR_TASK_DBUTILS_EXIT_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(str(value))
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(0)


class _Widgets:
    def __init__(self) -> None:
        self._defaults: dict[str, str] = {}

    def get(self, name: str) -> str:
        argv = sys.argv[1:]
        flag = f"--{name}"
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
        if name in self._defaults:
            return self._defaults[name]
        raise ValueError(f"no widget {name!r}: pass --{name} <value> in the job's parameters")

    getArgument = get

    def text(self, name: str, defaultValue: str = "", label: str | None = None) -> None:
        self._defaults[name] = defaultValue

    def dropdown(self, name: str, defaultValue: str, choices: list[str], label: str | None = None) -> None:
        self._defaults[name] = defaultValue

    combobox = dropdown

    def removeAll(self) -> None:
        self._defaults.clear()


class DBUtils:
    def __init__(self) -> None:
        self.notebook = _Notebook()
        self.widgets = _Widgets()


def _install() -> None:
    if not os.environ.get("CONVEYOR_TASK_DBUTILS_EXIT_FILE") or hasattr(builtins, "dbutils"):
        return
    builtins.dbutils = DBUtils()  # type: ignore[attr-defined]


def _chain() -> None:
    """Run the next sitecustomize on sys.path, the one this module shadows."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_install()
if os.environ.get("CONVEYOR_TASK_DBUTILS_EXIT_FILE"):
    _chain()
