"""The argv rule (shared.flows.argv): split like shlex, fill each slot into one word, never rescan."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.flows.argv import (
    command_line,
    command_problems,
    parse_command,
    render_env,
    render_step_params,
    shell_word,
    split_words,
)

# Command text without our ${...} (split_words keeps those whole; shlex does not know them).
shell_text = st.text(alphabet=st.sampled_from(list("ab c\t\n'\"\\$;|{}x-=")), max_size=30)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@given(text=shell_text)
def test_words_are_exactly_shlex_split(text: str) -> None:
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(ValueError):
            split_words(text, atomic_refs=False)
        return
    assert ["".join(c for c, _ in w) for w in split_words(text, atomic_refs=False)] == expected


@given(a=values, b=values, c=values)
def test_each_slot_fills_exactly_one_word_or_part_of_one(a: str, b: str, c: str) -> None:
    template = parse_command("prog --a ${trigger.params.a} --b=${trigger.params.b}{input} {output_dir}")
    argv = template.argv({"trigger": {"params": {"a": a, "b": b}}}, {"input": c, "output_dir": "/o"})
    assert argv == ["prog", "--a", a, f"--b={b}{c}", "/o"]


@given(words=st.lists(values, min_size=1, max_size=6))
def test_command_line_splits_back_into_the_same_words(words: list[str]) -> None:
    argv = shlex.split(command_line(words, "mkdir -p output; "))
    assert (
        argv[:2] == ["/bin/sh", "-c"]
        and argv[2] == 'mkdir -p output; exec "$@"'
        and argv[3:] == ["conveyor-task", *words]
    )


@given(value=values)
def test_shell_word_is_one_word(value: str) -> None:
    assert shlex.split(f"cmd {shell_word(value)}") == ["cmd", value] or value == ""


def test_list_commands_take_each_item_as_one_word() -> None:
    template = parse_command(["python", "a b.py", "{input}", "'quotes' stay", ">"])
    assert template.argv({}, {"input": "x y"}) == ["python", "a b.py", "x y", "'quotes' stay", ">"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo $${HOME} '$HOME' \\$x", ["echo", "${HOME}", "$HOME", "$x"]),
        ("awk '{print}' {input}", ["awk", "{print}", "IN"]),
        ("echo ${ trigger.params.a }", ["echo", "A"]),
        ('echo "a b" c\\ d', ["echo", "a b", "c d"]),
    ],
)
def test_literals_and_spaced_references(command: str, expected: list[str]) -> None:
    assert parse_command(command).argv({"trigger": {"params": {"a": "A"}}}, {"input": "IN"}) == expected


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("python a.py '{input_name}'", "write {input_name}"),
        ('python a.py --n="{input_name}"', "write --n={input_name}"),
        ('python a.py "${trigger.blob.name}"', "inside quotes"),
        ("sh -c 'cat {input}'", "move {input} out of the quoted text"),
        (["sh", "-ec", "cat {input}"], "inline script of sh"),
        (["bash", "-c", "--", "cat ${trigger.blob.name}"], "inline script of bash"),
        (["env", "A=1", "python", "-c", "print('{input}')"], "inline script of python"),
        (["python", "-cprint({input})"], "inline script"),
        ("${trigger.params.p}", "never choose the program"),
        (["env", "{input}"], "never choose the program"),
        ("python a.py | tee x", "'|' is shell syntax"),
        ("python a.py `id`", "'`' is shell syntax"),
        ('python a.py "$HOME"', "'$' is shell syntax"),
        ("python a.py {inptu}", "unknown placeholder {inptu}"),
        ("python a.py ${trigger..x}", "malformed reference"),
        ("python a.py ${trigger.x", "needs a closing"),
        ("python a.py \\", "backslash"),
        ("", "empty command"),
        ([], "empty command"),
        ([""], "first word (the program to run) is empty"),
        ("a\x00b", "NUL"),
        (["a", "b\x00"], "NUL"),
        (42, "must be text or a list"),
    ],
)
def test_problems_name_the_fix(command: object, fragment: str) -> None:
    problems = command_problems(command)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ValidationError) as err:
        parse_command(command, field="params.command")
    assert err.value.field == "params.command"


def test_usable_commands_have_no_problems() -> None:
    for command in [
        "python score_file.py --input {input} --output-dir {output_dir}",
        ["sh", "-c", 'cat "$1" > "$2/out"', "sh", "{input}", "{output_dir}"],
        ["python", "-c", "import sys; print(sys.argv[1])", "{input}"],
        "python -m mod --glob '*.csv' --x='a;b' {input_name}",
        "python a.py 'awk {print}' ${trigger.blob.name}",
    ]:
        assert command_problems(command) == [], command


def test_azureml_syntax_fills_expressions() -> None:
    template = parse_command("python t.py --d ${{inputs.d}} --m=${{ outputs.m }}", syntax="azureml", placeholders=None)
    assert template.render(lambda s: {"inputs.d": "a b", "outputs.m": "$(x)"}[s.name]) == [
        "python", "t.py", "--d", "a b", "--m=$(x)",
    ]  # fmt: skip


def test_a_nul_from_a_value_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        parse_command("prog {input}").argv({}, {"input": "a\x00b"})
    assert err.value.field == "params.command" and "NUL" in err.value.message


def test_step_params_at_launch() -> None:
    scope = {"trigger": {"params": {"n": 5, "xs": ["a b", 1], "s": "$(x)"}}, "run": {"id": "r1"}}
    batch = {"command": "prog ${trigger.params.s} {input}", "inputs": "${trigger.params.xs}", "max_task_retries": 1}
    assert render_step_params("batch", batch, scope) == {
        "command": "prog ${trigger.params.s} {input}",  # left to the backend: one pass with the task's values
        "inputs": ["a b", 1],  # a lone reference keeps its type where no process sees it
        "max_task_retries": 1,
    }
    dbx = {"python_file": "e.py", "parameters": ["--n", "${trigger.params.n}", "${trigger.params.xs}", "${run.id}"]}
    assert render_step_params("databricks", dbx, scope)["parameters"] == ["--n", "5", '["a b",1]', "r1"]
    aml = {"pipeline": "p.yml", "inputs": {"n": "${trigger.params.n}", "s": "x${trigger.params.s}"}}
    assert render_step_params("azureml", aml, scope)["inputs"] == {"n": "5", "s": "x$(x)"}
    assert render_env({"A": "${trigger.params.n}", "B": "${trigger.params.s} {input}"}, scope) == {
        "A": "5",
        "B": "$(x) {input}",
    }
