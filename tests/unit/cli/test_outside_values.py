"""Outside values reach the terminal as text, never as rich markup (issue 9).

A step error ``NotFoundError: [blob] blob apps/... not found`` lost ``[blob]`` in ``conveyor
show``; one with ``[/x]`` crashed it with MarkupError. Every way the CLI prints (lines, table
cells, tree labels, progress columns, errors) goes through shared/terminal.py.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shared import cli
from shared.engine.model import RunStatus, StepState
from shared.terminal import make_console
from tests.fakes import MemoryRunStore
from tests.unit.cli.test_render import make_run

NASTY = "NotFoundError: [blob] blob apps/x.py not found [/x] [bold]b[/bold] :smile: [link=http://e.x]l[/link]"


def nasty_run() -> object:
    run = make_run(
        [("score", "batch", StepState.FAILED, {"done": 0, "total": 1}), ("etl", "databricks", StepState.PENDING, None)],
        RunStatus.FAILED,
    )
    run.steps[0].error = NASTY
    run.steps[0].remote_id = "[red]remote[/]"
    run.steps[0].outputs = {"note": "[/]"}
    run.error = f"step score failed: {NASTY}"
    run.trigger.source = "http://127.0.0.1/landing/[a]b[/a].csv"
    run.gate = {"decision": "rejected", "metric": "r2", "reason": "[/x] worse"}
    return run


@pytest.mark.parametrize("markup", [True, False])
def test_print_run_shows_every_value_verbatim_on_any_console(markup: bool) -> None:
    buf = io.StringIO()
    out = Console(file=buf, width=400, color_system=None, markup=markup)  # a caller's console, markup or not
    cli.print_run(nasty_run(), out)  # type: ignore[arg-type]
    text = buf.getvalue()
    assert f"score: {NASTY}" in text
    assert f"error: step score failed: {NASTY}" in text
    assert "[red]remote[/]" in text and "score.note = [/]" in text
    assert "landing/[a]b[/a].csv" in text and "reason: [/x] worse" in text
    assert "😄" not in text


def test_trace_tree_labels_are_text() -> None:
    recs = [
        {"type": "span", "name": "[/x]", "span_id": "s1", "ts": "1", "status": "error", "attributes": {"e": NASTY}},
        {"type": "event", "name": "[bold]e", "parent_span_id": "s1", "ts": "2", "attributes": {}},
    ]
    buf = io.StringIO()
    Console(file=buf, width=400, color_system=None).print(cli.trace_tree(recs, "run [/x]"))
    text = buf.getvalue()
    assert "run [/x]" in text and "[/x] 0.0ms ERROR" in text and "• [bold]e" in text and "[blob]" in text


def test_the_cli_consoles_never_interpret_what_they_print() -> None:
    buf = io.StringIO()
    out = make_console(file=buf, width=200, color_system=None)
    out.print("[/x] [blob] :smile:")
    assert buf.getvalue() == "[/x] [blob] :smile:\n"


def test_show_and_runs_print_a_step_error_with_brackets(memory_storage: MemoryRunStore) -> None:
    run = nasty_run()
    memory_storage.create_if_absent(run)  # type: ignore[arg-type]
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["show", "a" * 32])
    assert shown.exit_code == 0, shown.output
    assert "[blob] blob apps/x.py not found [/x]" in shown.output
    listed = runner.invoke(cli.app, ["runs"])
    assert listed.exit_code == 0 and "aaaaaaaaaaaa" in listed.output


def test_an_error_message_with_brackets_is_printed_whole(memory_storage: MemoryRunStore) -> None:
    result = CliRunner().invoke(cli.app, ["show", "[/x]nope"])
    assert result.exit_code == 2
    assert "run '[/x]nope' not found" in result.output


def test_the_progress_bars_show_states_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    buf = io.StringIO()
    con = Console(file=buf, width=160, force_terminal=True, color_system=None)
    run = nasty_run()
    with cli.RunFollower(con) as f:
        f.update(run)  # type: ignore[arg-type]
    assert "failed" in buf.getvalue()
