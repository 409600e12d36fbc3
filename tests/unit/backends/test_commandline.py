"""Names become paths inside their directory; small state files; a task's environment.

(How values become argv words is tests/unit/flows/test_argv.py.)"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from shared.backends.commandline import (
    create_json_once,
    job_dir,
    local_file_name,
    read_json,
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
