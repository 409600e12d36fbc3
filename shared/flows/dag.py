"""A flow's steps as a graph: ``needs`` edges, ancestry, order, and the checks on them.

A step without ``needs`` needs the step written before it (so a plain list of steps is the
chain it always was); ``needs: []`` makes a root. ``needs`` may name steps written later: the
graph, not the file order, decides what waits for what, and a cycle is an error.

Two audiences: :func:`dag_problems` checks raw step dicts (the loader runs it on the YAML
even when other fields are invalid, and the Flow validator runs it on the parsed model),
one ``steps[i].<field>: message`` line per problem; :class:`Graph` answers the engine's
questions about a valid flow (needs, dependants, descendants, a topological order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Graph", "dag_problems", "needs_of", "not_upstream", "upstream_sets"]


def _name(step: Any) -> str | None:
    if isinstance(step, Mapping):
        name = step.get("name")
        return name if isinstance(name, str) else None
    return None


def needs_of(steps: Sequence[Any]) -> list[list[str]]:
    """Each step's needs: its explicit ``needs`` list, else the step written before it."""
    out: list[list[str]] = []
    previous: str | None = None
    for step in steps:
        explicit = step.get("needs") if isinstance(step, Mapping) else None
        if isinstance(explicit, list):
            out.append([n for n in explicit if isinstance(n, str)])
        else:
            out.append([previous] if previous is not None else [])
        name = _name(step)
        previous = name if name is not None else previous
    return out


def _explicit(steps: Sequence[Any]) -> bool:
    return any(isinstance(s, Mapping) and s.get("needs") is not None for s in steps)


def upstream_sets(steps: Sequence[Any]) -> list[set[str]]:
    """For each step, every step it waits for, directly or through others (cycle-safe)."""
    needs = needs_of(steps)
    by_name: dict[str, int] = {}
    for i, step in enumerate(steps):
        name = _name(step)
        if name is not None:
            by_name.setdefault(name, i)
    out: list[set[str]] = []
    for i in range(len(steps)):
        seen: set[str] = set()
        todo = list(needs[i])
        while todo:
            n = todo.pop()
            if n in seen or n not in by_name:
                continue
            seen.add(n)
            todo.extend(needs[by_name[n]])
        seen.discard(_name(steps[i]) or "")
        out.append(seen)
    return out


def not_upstream(target: str, steps: Sequence[Any]) -> str:
    """The message for a ``${steps.<target>...}`` that the step cannot see."""
    if not _explicit(steps):
        return f"references steps.{target} which is not an earlier step"
    if target not in {_name(s) for s in steps}:
        return f"references steps.{target} which is not a step of this flow"
    return f"references steps.{target} which is not upstream of this step (add it to needs)"


def _cycles(steps: Sequence[Any], needs: list[list[str]]) -> list[list[str]]:
    """The cycles a depth-first walk meets, each as names with first == last (self-needs excluded:
    they are reported on their own)."""
    by_name = {n: i for i, s in enumerate(steps) if (n := _name(s)) is not None}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for nxt in needs[by_name[name]]:
            if nxt not in by_name or nxt == name:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[name] = 2

    for name in by_name:
        if name not in state:
            visit(name)
    return found


def _refs(value: Any, field: str) -> dict[str, set[str]]:
    from shared.flows.template import TemplateError, references_by_field

    try:
        return references_by_field(value, field) if isinstance(value, Mapping | list | str) else {}
    except TemplateError:
        return {}  # step_problems reports malformed references


def _condition_refs(text: Any) -> set[str]:
    from shared.flows import expr

    if not isinstance(text, str):
        return set()
    try:
        return expr.references(expr.parse(text))
    except expr.ExprError:
        return set()  # the field validator reports it


def dag_problems(steps: Sequence[Any]) -> list[str]:
    """Problems of the graph: unknown or repeated needs, cycles, references to steps that are not
    upstream, ``${item}``/``${index}`` outside a for_each step, misuse of a for_each step's outputs.

    Each is ``steps[i].<field>: message``; entries that are not dicts are skipped.
    """
    problems: list[str] = []
    names = [_name(s) for s in steps]
    known = {n for n in names if n is not None}
    needs = needs_of(steps)
    upstream = upstream_sets(steps)
    fan_out = {
        n for n, s in zip(names, steps, strict=True) if n and isinstance(s, Mapping) and s.get("for_each") is not None
    }
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            continue
        explicit = step.get("needs")
        if isinstance(explicit, list):
            seen: set[str] = set()
            for j, need in enumerate(explicit):
                if not isinstance(need, str):
                    continue
                where = f"steps[{i}].needs[{j}]"
                if need == names[i]:
                    problems.append(f"{where}: a step cannot need itself")
                elif need not in known:
                    problems.append(f"{where}: unknown step {need!r}; steps: {', '.join(n for n in names if n)}")
                elif need in seen:
                    problems.append(f"{where}: {need!r} is listed twice")
                seen.add(need)
        is_fan_out = step.get("for_each") is not None
        if step.get("max_parallel") is not None and not is_fan_out:
            problems.append(f"steps[{i}].max_parallel: only a for_each step has instances to limit")
        fields: dict[str, set[str]] = {}
        fields.update(_refs(step.get("params"), f"steps[{i}].params"))
        fields.update(_refs(step.get("for_each"), f"steps[{i}].for_each"))
        cond = _condition_refs(step.get("if"))
        if cond:
            fields[f"steps[{i}].if"] = cond
        for field, refs in sorted(fields.items()):
            in_params = field.startswith(f"steps[{i}].params")
            for ref in sorted(refs):
                root, _, rest = ref.partition(".")
                parts = rest.split(".")
                if root in ("item", "index"):
                    if not in_params:
                        what = "for_each list" if field.endswith("for_each") else "if condition"
                        problems.append(
                            f"{field}: ${{{ref}}} is not defined in the {what} (it is evaluated once for the step)"
                        )
                    elif not is_fan_out:
                        problems.append(f"{field}: ${{{ref}}} is only defined in a for_each step")
                    continue
                if root != "steps" or not parts[0]:
                    continue
                target = parts[0]
                # references to steps that are not upstream are reported for params by step_problems
                if not in_params and target not in upstream[i]:
                    problems.append(f"{field}: {not_upstream(target, steps)}")
                    continue
                if target in fan_out and target in upstream[i]:
                    tail = parts[1:]
                    if field.endswith(".if") and tail[:1] == ["outputs"]:
                        problems.append(
                            f"{field}: steps.{target} is a for_each step; if cannot read its instances' outputs"
                        )
                    elif tail[:1] == ["outputs"] and len(tail) > 1 and not tail[1].isdigit():
                        use = f"${{steps.{target}.outputs}} or ${{steps.{target}.outputs.0.{tail[1]}}}"
                        problems.append(
                            f"{field}: steps.{target} is a for_each step: its outputs are a list, one per instance "
                            f"in item order (use {use})"
                        )
    for cycle in _cycles(steps, needs):
        first = min(names.index(n) for n in cycle)
        head = cycle[cycle.index(str(names[first])) :]
        ring = [*head[:-1], *cycle[: len(cycle) - len(head)], str(names[first])]
        problems.append(f"steps[{first}].needs: cycle: {' -> '.join(ring)} (a step cannot wait for itself)")
    return problems


@dataclass(frozen=True)
class Graph:
    """The needs graph of a valid flow."""

    order: tuple[str, ...]  # the steps as written
    needs: Mapping[str, tuple[str, ...]]
    dependants: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, steps: Sequence[Mapping[str, Any]]) -> Graph:
        names = tuple(str(s["name"]) for s in steps)
        needs = {n: tuple(ns) for n, ns in zip(names, needs_of(steps), strict=True)}
        dependants: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for m in needs[n]:
                dependants.setdefault(m, []).append(n)
        return cls(names, needs, {k: tuple(v) for k, v in dependants.items()})

    def descendants(self, name: str) -> set[str]:
        """Every step that waits for ``name``, directly or through others."""
        out: set[str] = set()
        todo = list(self.dependants.get(name, ()))
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo.extend(self.dependants.get(n, ()))
        return out

    def ancestors(self, name: str) -> set[str]:
        out: set[str] = set()
        todo = list(self.needs.get(name, ()))
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo.extend(self.needs.get(n, ()))
        return out

    def is_chain(self) -> bool:
        """Every step needs exactly the one written before it (the flows of before ``needs``)."""
        return all(self.needs[n] == ((self.order[i - 1],) if i else ()) for i, n in enumerate(self.order))

    def edges(self) -> list[tuple[str, str]]:
        """(need, step) pairs in file order."""
        return [(m, n) for n in self.order for m in self.needs[n]]
