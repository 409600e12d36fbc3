"""flows.yaml loading is bounded and never ends in a traceback (issue 6, observation 7).

A 523-byte "billion laughs" file ran 37 s and reached 1.67 GB; recursive aliases and
1,000-deep nesting printed RecursionError tracebacks. Each is now one ``FILE:LINE: path:
message`` line, quickly, from the loader, ``conveyor validate`` and ``conveyor up``. The fuzz
at the end asserts that anything at all given as flows.yaml loads or fails with
FlowsFileError whose every line is one such issue (``CONVEYOR_FUZZ_EXAMPLES`` raises the
number of examples; ``make test`` runs a bounded number).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.flows.loader import FlowsFileError, load_flows, load_flows_text
from shared.flows.model import FlowsFile
from tests.conftest import REPO_ROOT

ISSUE_LINE = re.compile(r"^\S+?(:\d+)?: \S")  # FILE[:LINE]: [path: ]message


def laughs(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs": each anchor a list of ``width`` aliases of the one before."""
    lines = ["l0: &l0 [" + ", ".join(["ha"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    lines.append(f"flows: {{x: {{description: *l{levels - 1}, triggers: [{{kind: manual}}], steps: []}}}}")
    return "\n".join(lines) + "\n"


MERGE_BOMB = "\n".join(
    ["m0: &m0 {a: 1, b: 2, c: 3, d: 4}"]
    + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}" for i in range(1, 12)]
    + ["flows: {x: {<<: *m11}}"]
)

HOSTILE = {
    "billion-laughs": (laughs(), "alias"),
    "merge-key-bomb": (MERGE_BOMB, "alias"),
    "recursive-mapping": ("flows: &f {x: *f}\n", "recursive alias"),
    "recursive-sequence": ("flows:\n  x:\n    steps: &s [*s]\n    triggers: [{kind: manual}]\n", "recursive alias"),
    "recursive-merge": ("flows: &f\n  <<: *f\n", "recursive alias"),
    "deep-flow-sequences": ("flows: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper"),
    "deep-flow-mappings": ("flows: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", "nested deeper"),
    "deep-block-mappings": (
        "flows:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(1000)),
        "nested deeper",
    ),
    "deep-through-aliases": (
        "a: &a " + "[" * 30 + "]" * 30 + "\nb: &b " + "[" * 20 + "*a" + "]" * 20 + "\nflows: {x: *b}\n",
        "nested deeper",
    ),
}


def one_issue(err: FlowsFileError) -> str:
    text = str(err)
    assert len(text.splitlines()) == 1, text
    assert ISSUE_LINE.match(text), text
    assert err.issues[0].line is not None, text
    return text


def test_the_billion_laughs_file_is_a_few_hundred_bytes() -> None:
    assert 300 < len(laughs().encode()) < 600


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_refused_in_one_line(case: str) -> None:
    text, message = HOSTILE[case]
    with pytest.raises(FlowsFileError) as err:
        load_flows_text(text)
    assert message in one_issue(err.value)


def test_billion_laughs_is_refused_without_expanding(tmp_path: Path) -> None:
    """In a child process with 1 GiB of address space and a timeout: before the limits this
    file expanded to 9**9 values (37 s, 1.67 GB); refused, it needs neither."""
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs())
    code = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from shared.flows.loader import FlowsFileError, load_flows
        try:
            load_flows(sys.argv[1])
        except FlowsFileError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{path}:") and "aliases expand the file to more than" in line


def test_a_file_past_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text("# padding\n" * 120_000)
    with pytest.raises(FlowsFileError) as err:
        load_flows(path)
    assert "limited to 1,048,576 bytes" in one_issue(err.value)
    with pytest.raises(FlowsFileError) as err:
        load_flows_text(path.read_text())
    assert "limited to" in one_issue(err.value)


def test_anchors_and_merges_of_a_normal_size_still_work() -> None:
    text = textwrap.dedent(
        """
        version: 1
        flows:
          one:
            triggers: [{kind: manual}]
            steps:
              - &step {kind: databricks, name: first, params: {python_file: a.py}, retries: {count: 1}}
              - {<<: *step, name: second, retries: {count: 2}}
        """
    )
    flows = load_flows_text(text)  # a merge that overrides keys is not a duplicate key
    assert [(s.name, s.retries.count) for s in flows.flows["one"].steps] == [("first", 1), ("second", 2)]


def conveyor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("case", ["billion-laughs", "recursive-mapping", "deep-flow-sequences", "deep-block-mappings"])
def test_validate_and_up_print_one_line_and_no_traceback(case: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text(HOSTILE[case][0])
    env = {"CONVEYOR_HOME": str(tmp_path / "home"), "CONVEYOR_FLOWS_FILE": str(path), "CONVEYOR_ROOT": str(tmp_path)}
    for args in (("validate",), ("validate", "--file", str(path)), ("up",)):
        proc = conveyor(*args, env=env)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip() not in ("stopping…", "")]  # up says stopping…
        assert line.startswith(f"{path}:") and HOSTILE[case][1] in line, (args, proc.stderr)
    assert not (tmp_path / "home" / "azurite").exists()  # up stopped before starting anything


# ---------------------------------------------------------------- fuzz

EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    "version", "flows", "triggers", "steps", "kind", "name", "params", "command", "inputs", "env", "container",
    "prefix", "suffix", "cron", "timezone", "events", "branch", "python_file", "parameters", "pipeline",
    "model_uri", "metrics", "model", "metric", "direction", "retries", "count", "on", "poll", "policies",
    "max_concurrent_runs", "timeout_seconds", "resource_files", "version", "<<",
]  # fmt: skip
KINDS = ["blob", "schedule", "azure_devops", "manual", "batch", "databricks", "azureml", "register", "deploy"]
FRAGMENTS = [
    "${trigger.blob.name}", "${steps.a.outputs.x}", "${", "}", "$${", "{input}", "{nosuch}", "'", '"', "\\",
    "$(touch CANARY_F1)", ";", "|", ">", "\x00", "\t", "\n", "&a", "*a", "<<", "[", "]", "{", ":", "- ", "#",
    "!!python/object:os.system", "!!binary", "%YAML 1.1", "---", "...", "\ud800", "\u202e", "0 0 * * * *",
]  # fmt: skip

scalars = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
    st.sampled_from(KINDS),
    st.integers(min_value=-(10**6), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)),
    max_leaves=40,
)


def assert_loads_or_one_line_issues(text: str) -> None:
    try:
        result = load_flows_text(text)
    except FlowsFileError as exc:
        assert exc.issues, str(exc)
        for issue in exc.issues:
            line = issue.format()
            assert "\n" not in line and "\r" not in line, line
            assert ISSUE_LINE.match(line), line
        return
    assert isinstance(result, FlowsFile)


@FUZZ
@given(doc=documents)
def test_fuzz_structured_documents(doc: object) -> None:
    try:
        text = yaml.safe_dump({"version": 1, "flows": doc}, allow_unicode=True)
    except yaml.YAMLError:
        return
    assert_loads_or_one_line_issues(text)


words = st.one_of(scalars, st.lists(st.one_of(scalars, st.sampled_from(FRAGMENTS)), max_size=4))
flow_docs = st.fixed_dictionaries(
    {
        "triggers": st.lists(
            st.fixed_dictionaries(
                {"kind": st.sampled_from(KINDS)},
                optional={"container": st.just("landing"), "cron": scalars, "manifest": scalars, "events": words},
            ),
            max_size=3,
        ),
        "steps": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.one_of(st.sampled_from(["a", "b", "c"]), scalars),
                    "kind": st.sampled_from(KINDS),
                    "params": st.dictionaries(
                        st.sampled_from(["command", "inputs", "python_file", "parameters", "pipeline", "model_uri"]),
                        words,
                        max_size=4,
                    ),
                },
                optional={"env": st.dictionaries(keys, scalars, max_size=3), "retries": words},
            ),
            max_size=4,
        ),
    },
    optional={"model": st.dictionaries(st.sampled_from(["name", "metric"]), scalars)},
)


@FUZZ
@given(flow=flow_docs)
def test_fuzz_flow_shaped_documents(flow: dict[str, object]) -> None:
    try:
        text = yaml.safe_dump({"version": 1, "flows": {"f": flow}}, allow_unicode=True)
    except yaml.YAMLError:
        return
    assert_loads_or_one_line_issues(text)


@FUZZ
@given(pieces=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(KEYS), st.text(max_size=8)), max_size=40))
def test_fuzz_yaml_fragments(pieces: list[str]) -> None:
    assert_loads_or_one_line_issues("".join(pieces))


REAL = (REPO_ROOT / "flows.yaml").read_text(encoding="utf-8").splitlines(keepends=True)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop", "dup", "replace", "insert"]),
            st.integers(min_value=0, max_value=len(REAL) - 1),
            st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzz_edits_of_the_real_flows_file(edits: list[tuple[str, int, str]]) -> None:
    lines = list(REAL)
    for op, at, text in edits:
        at = min(at, len(lines) - 1) if lines else 0
        if not lines:
            lines = [text]
        elif op == "drop":
            del lines[at]
        elif op == "dup":
            lines.insert(at, lines[at])
        elif op == "replace":
            head, sep, _ = lines[at].partition(": ")
            lines[at] = f"{head}{sep}{text}\n" if sep else text + "\n"
        else:
            cut = len(lines[at]) // 2
            lines[at] = lines[at][:cut] + text + lines[at][cut:]
    assert_loads_or_one_line_issues("".join(lines))
