"""Names become paths inside their directory; values become exactly one shell word."""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.backends.commandline import (
    create_json_once,
    job_dir,
    local_file_name,
    placeholders,
    read_json,
    render_task_command,
    safe_join,
    safe_relpath,
    tail_text,
)
from shared.errors import ValidationError

# ---------------------------------------------------------------- safe_relpath / safe_join


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "a.csv"),
        ("dir/sub/a.csv", "dir/sub/a.csv"),
        ("a b;$(touch p).csv", "a b;$(touch p).csv"),
        ("données/été ☃.csv", "données/été ☃.csv"),
        ("./a//b/./c", "a/b/c"),
        ("..evil.csv", "..evil.csv"),
        ("x; touch PWNED $(touch PWNED2) ..evil.csv", "x; touch PWNED $(touch PWNED2) ..evil.csv"),
    ],
)
def test_safe_relpath_keeps_names_as_data(name: str, expected: str) -> None:
    assert safe_relpath(name) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "//server/share",
        "C:x",
        "c:\\windows",
        "..\\..\\x",
        "a\\b",
        "a\x00b",
        ".",
        "./",
        "/",
    ],
)
def test_safe_relpath_refuses_traversal_and_tricks(name: str) -> None:
    with pytest.raises(ValidationError) as err:
        safe_relpath(name, field="params.inputs[0]")
    assert err.value.field == "params.inputs[0]"


def test_safe_join_stays_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    with pytest.raises(ValidationError):
        safe_join(tmp_path, "../outside.txt")


def test_safe_join_refuses_a_symlink_that_leads_out(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "link").symlink_to(tmp_path)
    with pytest.raises(ValidationError, match="outside"):
        safe_join(base, "link/secret.txt", field="f")


def test_local_file_name_is_the_base_name() -> None:
    assert local_file_name("../../x") == "x"
    assert local_file_name("raw/2024/a b.csv") == "a b.csv"
    with pytest.raises(ValidationError):
        local_file_name("dir/..")
    with pytest.raises(ValidationError):
        local_file_name("dir/")


def test_job_dir_refuses_keys_that_are_paths(tmp_path: Path) -> None:
    assert job_dir(tmp_path, "batch", "run-1-train-1") == tmp_path / "batch" / "run-1-train-1"
    for key in ("../x", "a/b", "", ".."):
        with pytest.raises(ValidationError) as err:
            job_dir(tmp_path, "batch", key)
        assert err.value.field == "key"


# ---------------------------------------------------------------- render_task_command

VALUES = {
    "input": "/wd/a b.csv",
    "input_name": "a b.csv",
    "output_dir": "/wd/output",
    "task_index": "3",
    "task_id": "task-00003",
}


def test_render_quotes_each_value() -> None:
    cmd = render_task_command("python s.py --input {input} --out {output_dir} --i {task_index}", VALUES)
    assert shlex.split(cmd) == ["python", "s.py", "--input", "/wd/a b.csv", "--out", "/wd/output", "--i", "3"]


def test_render_leaves_other_braces_alone() -> None:
    template = "awk '{print $1}' {input} | echo ${HOME} {a,b} {} > {output_dir}/x"
    cmd = render_task_command(template, VALUES)
    assert cmd == "awk '{print $1}' '/wd/a b.csv' | echo ${HOME} {a,b} {} > /wd/output/x"
    assert placeholders(template) == ["input", "output_dir"]


def test_render_names_an_unknown_placeholder() -> None:
    with pytest.raises(ValidationError) as err:
        render_task_command("echo {inptu}", VALUES)
    assert "{inptu}" in str(err.value)
    assert err.value.field == "params.command"


text_no_nul = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)


@given(value=text_no_nul, other=text_no_nul)
def test_render_gives_the_shell_exactly_one_word_per_value(value: str, other: str) -> None:
    cmd = render_task_command(
        "run {input} --name {input_name} {task_id}", {"input": value, "input_name": other, "task_id": "t"}
    )
    assert shlex.split(cmd) == ["run", value, "--name", other, "t"]


@given(name=st.sampled_from(["x; touch PWNED", "$(touch P)", "`id`", "a'b\"c", "*", "--help", "-rf /", "a\nb"]))
def test_render_neutralises_shell_syntax(name: str) -> None:
    cmd = render_task_command("cat {input}", {"input": name})
    assert shlex.split(cmd) == ["cat", name]


# ---------------------------------------------------------------- small state files


def test_create_json_once_is_first_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    assert create_json_once(path, {"n": 1}) is True
    assert create_json_once(path, {"n": 2}) is False
    assert read_json(path) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]  # no temp files left
    assert read_json(tmp_path / "missing.json") is None


def test_tail_text(tmp_path: Path) -> None:
    path = tmp_path / "stderr.txt"
    path.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail_text(path, lines=2) == "line 98\nline 99"
    assert tail_text(tmp_path / "none.txt") == ""
