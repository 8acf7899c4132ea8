"""A step's settings: one frozen dataclass whose fields carry their default, constraint and help.

`setting(...)` declares a field; `resolve(cls, config, values)` fills the fields bound to
datasets.yaml, checks every value once (one message style, naming the option and the key), and
returns the frozen instance the step trusts. The CLI builds its options from the same fields
(curation/cli_options.py), so a setting is declared once for the library, `curate <step>` and
`curate run`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from curation.config import ConfigError, DatasetConfig


class SettingError(ConfigError):
    """A step setting is invalid; exits 2 like any other usage error."""

    exit_code = 2


@dataclass(frozen=True)
class Spec:
    """What a settings field declares besides its default (kept in the field's metadata)."""

    help: str
    low: float | None = None            # inclusive bounds unless *_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    many: bool = False                  # a tuple of choices (repeatable option)
    check: Callable[[Any], Any] | None = None   # returns the parsed value or raises ValueError
    config: str | None = None           # None default: take this DatasetConfig attribute path
    result: bool = True                 # changes the step's result (fingerprinted, carried over)
    flag: str | None = None             # the CLI flag when not --<name-with-dashes>
    run_flag: str | None = None         # the flag in `curate run` when not `flag`
    path: str | None = None             # "dir" / "file": a filesystem path
    exists: bool = False
    cli: bool = True                    # offered on the command line
    kind: type | None = None            # int / float / str / bool when the default is None


def setting(default: Any, help: str, **spec) -> Any:
    """A settings field: its default plus a Spec (see Spec's fields)."""
    return field(default=default, metadata={"spec": Spec(help=help, **spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec") or Spec(help="")


def kind_of(f: dataclasses.Field) -> type:
    """The scalar type of a field: declared, else taken from its default."""
    spec = spec_of(f)
    if spec.kind is not None:
        return spec.kind
    if spec.path:
        return Path
    if spec.many:
        return tuple
    return type(f.default) if f.default is not None else str


def flag_of(f: dataclasses.Field) -> str:
    return spec_of(f).flag or "--" + f.name.replace("_", "-")


def _from_config(config: DatasetConfig, path: str):
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def check_value(step: str, f: dataclasses.Field, value):
    """The value parsed and checked against the field's Spec; ConfigError naming option and key."""
    spec = spec_of(f)
    where = f"{step}: option {flag_of(f)} (setting '{f.name}')"
    if value is None:
        return None
    kind = kind_of(f)
    try:
        if spec.check is not None:
            value = spec.check(value)
        elif kind is bool and not isinstance(value, bool):
            raise ValueError("must be true or false")
        elif kind is int:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError("must be a whole number")
            value = int(value)
        elif kind is float:
            value = float(value)
        elif kind is Path:
            value = Path(value).expanduser()
        elif spec.many:
            value = tuple(value) if not isinstance(value, str) else (value,)
    except (TypeError, ValueError) as exc:
        raise SettingError(f"{where} {exc}, got {value!r}") from None
    _check_bounds(where, spec, value)
    return value


def _check_bounds(where: str, spec: Spec, value) -> None:
    values = value if spec.many else (value,)
    if spec.choices is not None:
        bad = [v for v in values if v not in spec.choices]
        if bad:
            raise SettingError(f"{where} must be one of {', '.join(spec.choices)}, got {bad[0]!r}")
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        raise SettingError(f"{where} must be {'above' if spec.low_open else 'at least'} "
                          f"{spec.low:g}, got {value!r}")
    if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
        raise SettingError(f"{where} must be {'below' if spec.high_open else 'at most'} "
                          f"{spec.high:g}, got {value!r}")
    if spec.path and spec.exists and not Path(value).is_dir():
        raise SettingError(f"{where} must be an existing folder, got {str(value)!r}")


def resolve(step: str, cls: type, config: DatasetConfig, values: dict):
    """The step's frozen settings: values (unknown keys refused), None filled from datasets.yaml,
    every field checked, then the class's own cross-field rules (its __post_init__)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingError(f"{step}: unknown setting(s) {unknown} (known: {', '.join(fields)})")
    checked = {}
    for name, f in fields.items():
        value = values.get(name, f.default)
        bound = spec_of(f).config
        if value is None and bound is not None:
            value = _from_config(config, bound)
        checked[name] = check_value(step, f, value)
    return cls(**checked)


def record_of(settings) -> dict:
    """The settings as JSON-able values: what runs/<step>.json holds."""
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}


def result_keys(cls: type) -> list[str]:
    """The fields that change a step's result: fingerprinted and carried over by `curate run`."""
    return [f.name for f in dataclasses.fields(cls) if spec_of(f).result]
