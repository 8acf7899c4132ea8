"""Click options generated from the steps' Settings, so each option is declared once.

`step_options(step)` gives `curate <step>` one option per setting, with its default, bounds and
help. `run_options(steps)` gives `curate run` the union of every step's settings: steps that
share a setting name and meaning share the option (--seed, --workers, --backbone), a setting
whose `run_flag` differs gets its own (--noise-threshold). In `curate run` every option
defaults to None, meaning "not given": the step keeps its recorded value or its default.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable

import click

from curation.settings import flag_of, kind_of, spec_of
from curation.steps import Step


def click_type(f: dataclasses.Field):
    """The click parameter type of a settings field (bounds and choices included)."""
    spec, kind = spec_of(f), kind_of(f)
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if spec.path:
        return click.Path(file_okay=spec.path == "file", dir_okay=spec.path == "dir",
                          exists=spec.exists, path_type=Path)
    if kind in (int, float) and (spec.low is not None or spec.high is not None):
        ranged = click.IntRange if kind is int else click.FloatRange
        extra = {} if kind is int else {"min_open": spec.low_open, "max_open": spec.high_open}
        return ranged(spec.low, spec.high, **extra)
    return {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)


def _option(f: dataclasses.Field, *, flag: str, dest: str, help: str, unset: bool):
    """One click.option; unset=True: default None ("not given"), booleans as --x/--no-x."""
    spec, kind = spec_of(f), kind_of(f)
    name = flag[2:]
    if kind is bool:
        if f.default is False and not unset:
            return click.option(flag, dest, is_flag=True, default=False, help=help)
        return click.option(f"--{name}/--no-{name}", dest, default=None if unset else f.default,
                            show_default=not unset and f.default is not None, help=help)
    default = None if unset else f.default
    shown = default is not None and default != () and not unset
    return click.option(flag, dest, type=click_type(f), multiple=spec.many,
                        default=tuple(default) if spec.many and default else default,
                        show_default=shown, help=help)


def cli_fields(step: Step) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(step.settings) if spec_of(f).cli]


def step_options(step: Step) -> Callable:
    """Decorator adding `curate <step>`'s options, in the Settings' field order."""
    def decorate(func):
        for f in reversed(cli_fields(step)):
            func = _option(f, flag=flag_of(f), dest=f.name, help=spec_of(f).help,
                           unset=False)(func)
        return func
    return decorate


def run_flags(steps: Iterable[Step]) -> dict[str, list[tuple[Step, dataclasses.Field]]]:
    """`curate run` flag -> the (step, field) pairs it sets; shared flags must mean one thing."""
    flags: dict[str, list[tuple[Step, dataclasses.Field]]] = {}
    for step in steps:
        for f in cli_fields(step):
            flags.setdefault(spec_of(f).run_flag or flag_of(f), []).append((step, f))
    for flag, users in flags.items():
        kinds = {_meaning(f) for _, f in users}
        if len(kinds) > 1:
            raise TypeError(f"curate run {flag}: steps {[s.name for s, _ in users]} declare it "
                            f"differently; give one a run_flag")
    return flags


def _meaning(f: dataclasses.Field) -> tuple:
    spec = spec_of(f)
    return (kind_of(f), spec.low, spec.high, spec.low_open, spec.high_open, spec.choices,
            spec.many, spec.path, spec.exists)


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def run_options(steps: Iterable[Step]) -> Callable:
    """Decorator adding every step's settings to `curate run` (see the module docstring)."""
    flags = run_flags(steps)

    def decorate(func):
        for flag, users in reversed(list(flags.items())):
            owners = ", ".join(dict.fromkeys(step.name for step, _ in users))
            first = users[0][1]
            func = _option(first, flag=flag, dest=_dest(flag), unset=True,
                           help=f"[{owners}] {spec_of(first).help}")(func)
        return func
    return decorate


def run_settings(steps: Iterable[Step], values: dict) -> dict:
    """The {step: {field: value}} that `curate run`'s given options (not None, not ()) set."""
    chosen: dict[str, dict] = {}
    for flag, users in run_flags(steps).items():
        value = values.get(_dest(flag))
        if value is None or value == ():
            continue
        for step, f in users:
            chosen.setdefault(step.name, {})[f.name] = value
    return chosen
