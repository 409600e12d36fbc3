"""Load flows.yaml with line numbers in every error.

``load_flows(path)`` / ``load_flows_text(text)`` parse YAML safely (PyYAML's SafeLoader,
YAML 1.2 booleans: only true/false), keep the line of every key and list item, validate with
the pydantic model, and on failure raise :class:`FlowsFileError` carrying **every** problem as
a :class:`FlowIssue` ``(path, line, message)`` sorted by line. ``str(error)`` reads::

    flows.yaml:12: flows.retrain.steps[2].params.command: field required
    flows.yaml:20: flows.retrain.triggers[0].cron: minute: 61 is out of range 0-59

Paths are what a user sees in the file: pydantic's union tags (``batch``, ``blob``...) are
dropped, and problems found by the flow-level validator (duplicate step names, references to
later steps) point at the step or param they are about. Nothing is cached.

Loading is bounded, so a hostile or broken file is refused quickly with one line each:
at most :data:`MAX_FILE_BYTES`, nesting at most :data:`MAX_DEPTH` levels (checked while the
YAML is composed, before any recursion could run deep), and at most :data:`MAX_NODES`
values once aliases are expanded (a "billion laughs" file is a few hundred bytes that
expand to billions of values); an alias inside its own anchor is refused. The expanded size
is counted on the composed node graph, where an alias is one shared node, so the count
itself is linear in the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError as PydanticValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shared.errors import NotFoundError, ValidationError
from shared.flows.dag import dag_problems
from shared.flows.model import NAME_RE, STEP_KINDS, Flow, FlowsFile, step_problems
from shared.flows.schema import json_schema
from shared.flows.scope import reference_problems

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "FlowIssue",
    "FlowsFileError",
    "ProjectFiles",
    "get_flow",
    "json_schema",
    "load_flows",
    "load_flows_text",
]

TRIGGER_KINDS = ("blob", "schedule", "azure_devops", "manual")

MAX_FILE_BYTES = 1024 * 1024  # a large real flows.yaml is a few tens of KB
MAX_DEPTH = 40  # nesting levels, aliases expanded (a real file nests about 8 deep)
MAX_NODES = 100_000  # values (keys included) once aliases are expanded
_TAGS = frozenset(STEP_KINDS) | frozenset(TRIGGER_KINDS)

Loc = tuple[str | int, ...]


# ---------------------------------------------------------------- issues and the error


@dataclass(frozen=True)
class FlowIssue:
    """One problem in a flows file. ``path`` like ``flows.retrain.steps[2].params.command``."""

    path: str
    line: int | None
    message: str

    def format(self, filename: str = "flows.yaml") -> str:
        """``FILE:LINE: path: message`` on one line (line breaks inside a message become spaces)."""
        where = f"{filename}:{self.line}" if self.line is not None else filename
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return " ".join(text.splitlines())

    def __str__(self) -> str:
        return self.format()


def _sort_key(issue: FlowIssue) -> tuple[bool, int, str]:
    return (issue.line is None, issue.line or 0, issue.path)


class FlowsFileError(ValidationError):
    """flows.yaml could not be loaded. ``issues`` holds every problem, sorted by line."""

    def __init__(self, issues: Iterable[FlowIssue], filename: str = "flows.yaml"):
        self.issues: list[FlowIssue] = sorted(issues, key=_sort_key)
        self.filename = filename
        report = "\n".join(i.format(filename) for i in self.issues) or f"{filename}: invalid"
        first = self.issues[0] if self.issues else None
        super().__init__(report, field=(first.path or None) if first else None, line=first.line if first else None)

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- YAML with lines


class _TooBig(Exception):
    """A loading limit was hit; carries the issue to report."""

    def __init__(self, issue: FlowIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


def _short_path(loc: Sequence[str | int]) -> str:
    return _format_path(tuple(loc[:8])) + ("..." if len(loc) > 8 else "")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, so ``on: any`` (Retries.on) stays the key ``on``, and a
    nesting limit checked as nodes are composed (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.conveyor_path: list[str | int] = []
        self.conveyor_aliases: dict[Loc, int] = {}  # where each alias is used -> its line

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        segment: str | int | None = None
        if isinstance(parent, SequenceNode) and isinstance(index, int):
            segment = index
        elif isinstance(parent, MappingNode) and index is not None:
            segment = str(index.value) if isinstance(index, ScalarNode) else "?"
        if segment is not None:
            self.conveyor_path.append(segment)
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) and segment is not None:
                self.conveyor_aliases[tuple(self.conveyor_path)] = event.start_mark.line + 1
            if len(self.conveyor_path) > MAX_DEPTH:
                line = event.start_mark.line + 1
                msg = f"nested deeper than {MAX_DEPTH} levels; flows.yaml is refused beyond that"
                raise _TooBig(FlowIssue(_short_path(self.conveyor_path), line, msg))
            return super().compose_node(parent, index)
        finally:
            if segment is not None:
                self.conveyor_path.pop()


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _parse_yaml(text: str, lines: dict[Loc, int], issues: list[FlowIssue]) -> tuple[Any, Node | None]:
    """(data, node), filling ``lines`` and noting duplicate keys in ``issues`` on the node graph
    as written (before merge keys are flattened into it); raises yaml.YAMLError, or _TooBig for
    a file past the limits."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_FILE_BYTES:
        msg = f"the file is {size:,} bytes; flows.yaml is limited to {MAX_FILE_BYTES:,} bytes"
        raise _TooBig(FlowIssue("", 1, msg))
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, loader.conveyor_aliases)
            _lines(node, (), lines, issues, set())
        data = loader.construct_document(node) if node is not None else None
        return data, node
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _check_expansion(root: Node, aliases: dict[Loc, int]) -> None:
    """Refuse an alias inside its own anchor, nesting past MAX_DEPTH once aliases are
    expanded, and more than MAX_NODES values in all. Linear: each node is walked once, a
    node seen again (an alias) adds its remembered size and height."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()
    path: list[str | int] = []
    total = 0

    def fail(message: str) -> NoReturn:
        line = next((aliases[tuple(path[:n])] for n in range(len(path), 0, -1) if tuple(path[:n]) in aliases), None)
        raise _TooBig(FlowIssue(_short_path(path), line, message))

    def visit(node: Node, depth: int) -> tuple[int, int]:
        nonlocal total
        nid = id(node)
        if nid in open_nodes:
            fail("a recursive alias: the anchor it names contains this alias, so its value never ends")
        known = sizes.get(nid)
        if known is not None:
            if depth + known[1] > MAX_DEPTH:
                fail(f"nested deeper than {MAX_DEPTH} levels once this alias is expanded")
            total += known[0]
            if total > MAX_NODES:
                fail(f"aliases expand the file to more than {MAX_NODES:,} values (an alias bomb?)")
            return known
        if depth > MAX_DEPTH:
            fail(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        total += 1
        if total > MAX_NODES:
            fail(f"more than {MAX_NODES:,} values once aliases are expanded")
        open_nodes.add(nid)
        size, height = 1, 0
        if isinstance(node, MappingNode):
            for key, value in node.value:
                path.append(str(key.value) if isinstance(key, ScalarNode) else "?")
                for child in (key, value):
                    s, h = visit(child, depth + 1)
                    size, height = size + s, max(height, h + 1)
                path.pop()
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                path.append(i)
                s, h = visit(item, depth + 1)
                size, height = size + s, max(height, h + 1)
                path.pop()
        open_nodes.discard(nid)
        sizes[nid] = (size, height)
        return size, height

    visit(root, 0)


def _yaml_issue(exc: yaml.YAMLError, text: str = "") -> FlowIssue:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1 if text else None
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return FlowIssue("", line, f"YAML syntax error: unacceptable character {what}: {exc.reason}")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        cm, pm = exc.context_mark, exc.problem_mark
        if cm is not None and pm is not None and exc.context and cm.line != pm.line:
            parts[0] = f"{exc.context} (line {cm.line + 1})"
        msg = "; ".join(parts) or "invalid YAML"
        return FlowIssue("", mark.line + 1 if mark is not None else None, f"YAML syntax error: {msg}")
    return FlowIssue("", None, f"YAML syntax error: {exc}")


def _lines(
    node: Node, path: Loc, out: dict[Loc, int], issues: list[FlowIssue], stack: set[int], merged: bool = False
) -> None:
    """Map each path to the line of its key (mappings) or item (sequences); note duplicate keys."""
    if id(node) in stack:
        return
    stack = stack | {id(node)}
    if isinstance(node, MappingNode):
        merges: list[Node] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line and not merged:
                msg = f"duplicate key {key!r} (first at line {first_line[key]})"
                issues.append(FlowIssue(_format_path((*path, key)), line, msg))
            first_line.setdefault(key, line)
            child = (*path, key)
            if merged:
                out.setdefault(child, line)
            else:
                out[child] = line
            _lines(value_node, child, out, issues, stack, merged)
        for m in merges:
            for sub in m.value if isinstance(m, SequenceNode) else [m]:
                _lines(sub, path, out, issues, stack, merged=True)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out.setdefault(child, item.start_mark.line + 1)
            _lines(item, child, out, issues, stack, merged)


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        key = tuple(str(p) if isinstance(p, str) else p for p in loc[:n])
        if key in lines:
            return lines[key]
    return None


_PLAIN = re.compile(r"^[A-Za-z0-9_-]+$")


def _format_path(loc: Loc) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _PLAIN.match(p):
            out += f".{p}" if out else p
        else:
            out += f"[{p!r}]"
    return out


# ---------------------------------------------------------------- pydantic errors -> issues


def _clean_loc(loc: tuple[Any, ...], data: Any, keep_last: bool) -> tuple[Loc, bool]:
    """Drop union tags from a pydantic loc, guided by the data. Returns (loc, is_key_error)."""
    node: Any = data
    out: list[str | int] = []
    is_key = False
    for i, el in enumerate(loc):
        last = i == len(loc) - 1
        if el == "[key]":
            is_key = True
            continue
        if isinstance(node, dict):
            if isinstance(el, str) and el in _TAGS and node.get("kind") == el:
                continue  # discriminator tag
            match = next((k for k in node if k == el or str(k) == str(el)), _MISSING)
            if match is not _MISSING:
                out.append(str(match))
                node = node[match]
                continue
            if last and keep_last:
                out.append(el)
            node = None
            continue
        if isinstance(node, list) and isinstance(el, int):
            out.append(el)
            node = node[el] if 0 <= el < len(node) else None
            continue
        if last and keep_last and node is None and isinstance(el, str):
            out.append(el)
        # otherwise: a union member label such as 'str' or 'list[str]' after a scalar
    return tuple(out), is_key


_MISSING = object()
_SUBPATH = re.compile(r"^((?:[A-Za-z_][\w-]*)(?:\.[A-Za-z_][\w-]*|\[\d+\])*): (.+)$", re.DOTALL)
_SEGMENTS = re.compile(r"[A-Za-z_][\w-]*|\[\d+\]")


def _subpath(text: str) -> Loc:
    return tuple(int(s[1:-1]) if s.startswith("[") else s for s in _SEGMENTS.findall(text))


def _node_at(data: Any, loc: Loc) -> Any:
    node = data
    for p in loc:
        in_dict = isinstance(node, dict) and p in node
        in_list = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        if in_dict or in_list:
            node = node[p]
        else:
            return None
    return node


def _lower_first(msg: str) -> str:
    if len(msg) > 1 and msg[0].isupper() and msg[1].islower():
        return msg[0].lower() + msg[1:]
    return msg


def _got(value: Any) -> str:
    if isinstance(value, (str, int, float, bool)):
        text = repr(value)
        return f" (got {text[:60] + '...' if len(text) > 60 else text})"
    return ""


def _messages(err: dict[str, Any], loc: Loc, is_key: bool) -> list[tuple[Loc, str]]:
    """One pydantic error -> (loc, message) pairs (a flow validator may report several)."""
    etype = err.get("type", "")
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        what = "step" if len(loc) >= 2 and loc[-2] == "steps" else "trigger"
        kinds = STEP_KINDS if what == "step" else TRIGGER_KINDS
        if etype == "union_tag_invalid":
            msg = f"unknown {what} kind {ctx.get('tag')!r}; expected one of: {', '.join(kinds)}"
        else:
            msg = f"missing 'kind' (one of: {', '.join(kinds)})"
        return [((*loc, "kind"), msg)]
    if etype == "missing":
        return [(loc, "field required")]
    if etype == "extra_forbidden":
        return [(loc, "unknown field (not allowed here)")]
    if etype == "string_pattern_mismatch" and ctx.get("pattern") == NAME_RE:
        msg = "must be lowercase letters, digits, '_' or '-', starting with a letter (at most 63)"
        return [(loc, f"{'invalid name' if is_key else 'invalid value'}{_got(err.get('input'))}: {msg}")]
    if is_key:
        return [(loc, f"invalid name: {_lower_first(msg)}")]
    here = err.get("_node")
    if etype == "value_error" and isinstance(here, dict):
        # The flow validator prefixes each problem (one per line) with its path inside the flow.
        out: list[tuple[Loc, str]] = []
        for line in msg.splitlines():
            m = _SUBPATH.match(line)
            sub = _subpath(m.group(1)) if m else ()
            if m and isinstance(here, dict) and sub and sub[0] in here:
                out.append(((*loc, *sub), m.group(2)))
            else:
                out.append((loc, line))
        return out
    return [(loc, _lower_first(msg))]


def _merge_messages(msgs: list[str]) -> str:
    unique = list(dict.fromkeys(msgs))
    head = "input should be "
    if len(unique) > 1 and all(m.startswith(head) for m in unique):
        tails = [m[len(head) :] for m in unique]
        return head + " or ".join(tails)
    return "; ".join(unique)


def _issues_from_pydantic(exc: PydanticValidationError, data: Any, lines: dict[Loc, int]) -> list[FlowIssue]:
    grouped: dict[Loc, list[str]] = {}
    got: dict[Loc, str] = {}
    separate: list[FlowIssue] = []  # the flow validator's problems: one issue each, as _cross_step_issues has them
    for details in exc.errors(include_url=False):
        err: dict[str, Any] = dict(details)
        loc, is_key = _clean_loc(tuple(err["loc"]), data, keep_last=err.get("type") == "missing")
        err["_node"] = _node_at(data, loc)
        if err.get("type") == "value_error" and isinstance(err["_node"], dict) and not is_key:
            for sub_loc, message in _messages(err, loc, is_key):
                separate.append(FlowIssue(_format_path(sub_loc), _line_for(sub_loc, lines), message))
            continue
        for sub_loc, message in _messages(err, loc, is_key):
            grouped.setdefault(sub_loc, []).append(message)
            if err.get("type") not in ("value_error", "missing", "extra_forbidden") and not is_key:
                got.setdefault(sub_loc, _got(err.get("input")))
    return separate + [
        FlowIssue(_format_path(loc), _line_for(loc, lines), _merge_messages(msgs) + got.get(loc, ""))
        for loc, msgs in grouped.items()
    ]


def _cross_step_issues(data: dict[str, Any], lines: dict[Loc, int]) -> list[FlowIssue]:
    """Duplicate step names, bad references and graph problems (shared.flows.dag), read from the raw YAML.

    The flow's own validator only runs once every field of the flow is valid; running the
    same checks on the raw data reports them alongside any other problem in that flow.
    """
    issues: list[FlowIssue] = []
    flows = data.get("flows")
    if not isinstance(flows, dict):
        return issues
    for name, flow in flows.items():
        if not isinstance(flow, dict) or not isinstance(flow.get("steps"), list):
            continue
        base: Loc = ("flows", str(name))
        raw_triggers = flow.get("triggers")
        triggers: list[Any] = raw_triggers if isinstance(raw_triggers, list) else []
        problems = step_problems(flow["steps"], has_model=flow.get("model") is not None) + dag_problems(flow["steps"])
        for problem in problems + reference_problems(flow["steps"], triggers):
            m = _SUBPATH.match(problem)
            loc = (*base, *_subpath(m.group(1))) if m else base
            issues.append(FlowIssue(_format_path(loc), _line_for(loc, lines), m.group(2) if m else problem))
    return issues


@dataclass(frozen=True)
class ProjectFiles:
    """Check that the project files flows name exist: paths are relative to ``root``. A
    Databricks ``python_file`` is a project file only with the local Databricks backend (in
    azure mode it is a workspace path); an Azure ML ``pipeline`` always is (both backends read it)."""

    root: Path
    python_files: bool = True


def _file_issues(data: dict[str, Any], lines: dict[Loc, int], project: ProjectFiles) -> list[FlowIssue]:
    issues: list[FlowIssue] = []
    flows = data.get("flows")
    if not isinstance(flows, dict):
        return issues
    root = project.root.resolve()
    named = (("databricks", "python_file"),) if project.python_files else ()
    for flow_name, flow in flows.items():
        steps = flow.get("steps") if isinstance(flow, dict) else None
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            params = step.get("params") if isinstance(step, dict) else None
            if not isinstance(params, dict):
                continue
            for kind, key in (*named, ("azureml", "pipeline")):
                value = params.get(key)
                if step.get("kind") != kind or not isinstance(value, str) or not value or "${" in value:
                    continue
                target = (root / value).resolve()
                if not target.is_relative_to(root):
                    message = f"{value!r} is outside the project root ({root})"
                elif not target.is_file():
                    message = f"no such file under the project root ({root}): {value!r}"
                else:
                    continue
                loc: Loc = ("flows", str(flow_name), "steps", i, "params", key)
                issues.append(FlowIssue(_format_path(loc), _line_for(loc, lines), message))
    return issues


# ---------------------------------------------------------------- public API


def load_flows_text(text: str, filename: str = "flows.yaml", *, project: ProjectFiles | None = None) -> FlowsFile:
    """Parse and validate flows.yaml text; :class:`FlowsFileError` lists every problem. With
    ``project``, the project files the flows name must exist too."""
    issues: list[FlowIssue] = []
    lines: dict[Loc, int] = {}
    try:
        data, node = _parse_yaml(text, lines, issues)
    except yaml.YAMLError as exc:
        raise FlowsFileError([_yaml_issue(exc, text)], filename) from None
    except _TooBig as exc:
        raise FlowsFileError([exc.issue], filename) from None
    if data is None:
        raise FlowsFileError([FlowIssue("", 1, "the file is empty; expected a mapping with 'flows:'")], filename)
    if not isinstance(data, dict):
        line = node.start_mark.line + 1 if node is not None else 1
        kind = type(data).__name__
        msg = f"expected a mapping with 'flows:' at the top, got a {kind}"
        raise FlowsFileError([FlowIssue("", line, msg)], filename)
    if project is not None:
        issues.extend(_file_issues(data, lines, project))
    try:
        flows = FlowsFile.model_validate(data)
    except PydanticValidationError as exc:
        issues.extend(_issues_from_pydantic(exc, data, lines))
        issues.extend(_cross_step_issues(data, lines))
        raise FlowsFileError(list(dict.fromkeys(issues)), filename) from None
    if issues:  # duplicate keys (YAML would silently keep the last one), missing project files
        raise FlowsFileError(issues, filename)
    return flows


def load_flows(path: Path | str, *, project: ProjectFiles | None = None) -> FlowsFile:
    """Read and validate a flows.yaml file (and, with ``project``, the files it names)."""
    p = Path(path)
    filename = str(path)
    if not p.exists():
        raise FlowsFileError([FlowIssue("", None, f"file not found: {p}")], filename)
    if not p.is_file():
        raise FlowsFileError([FlowIssue("", None, f"not a file: {p}")], filename)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            msg = f"the file is {size:,} bytes; flows.yaml is limited to {MAX_FILE_BYTES:,} bytes"
            raise FlowsFileError([FlowIssue("", 1, msg)], filename)
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FlowsFileError([FlowIssue("", None, f"not UTF-8 text: {exc.reason}")], filename) from None
    except OSError as exc:
        raise FlowsFileError([FlowIssue("", None, f"cannot read the file: {exc.strerror or exc}")], filename) from None
    return load_flows_text(text, filename, project=project)


def get_flow(flows: FlowsFile, name: str) -> Flow:
    """The flow called ``name``; :class:`NotFoundError` lists the known names otherwise."""
    try:
        return flows.flows[name]
    except KeyError:
        known = ", ".join(sorted(flows.flows)) or "(none)"
        raise NotFoundError(f"unknown flow {name!r}; known: {known}") from None
