"""Load experiment files: YAML (safe loader only) -> validated Experiment, or one clear ConfigError."""
from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from qbench.errors import ConfigError
from qbench.registry import did_you_mean
from qbench.schema.experiment import Experiment, FieldError

MAX_FILE_BYTES = 1_000_000  # experiment files are small; refuse anything that looks like a mistake


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file. Raises ConfigError naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such experiment file", where=str(path))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"file is {size} bytes; experiment files are limited to {MAX_FILE_BYTES}",
                          where=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=str(path)) from None
    return parse_experiment(text, source=str(path))


def parse_experiment(text: str, source: str = "<string>") -> Experiment:
    """Validate YAML text. Only plain YAML data is accepted: tags that build objects are refused."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "constructor for the tag" in problem:
            problem = problem.replace("could not determine a constructor for the tag", "tag not allowed")
            problem += " (experiment files hold plain data only; YAML tags that build objects are refused)"
        raise ConfigError(f"invalid YAML: {problem}", where=where) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", where=source) from None
    if data is None:
        raise ConfigError("file is empty", where=source)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of fields at the top level, got {type(data).__name__}",
                          where=source)
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_first_error(e), where=source) from None
    except RecursionError:
        raise ConfigError("document nested too deeply", where=source) from None


def _first_error(err: ValidationError) -> str:
    """One short line for the first problem, with a did-you-mean hint for unknown keys."""
    errors = err.errors(include_url=False)
    # pydantic also reports a list as "too short" when its only items failed: not a problem of its own
    locs = [tuple(e.get("loc", ())) for e in errors]
    errors = [e for e, loc in zip(errors, locs)
              if not (e["type"] == "too_short" and any(o[:len(loc)] == loc and len(o) > len(loc) for o in locs))]
    # a misspelt key shows up as "unknown field" plus "field required": report the typo (with its hint)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first.get("loc", ()))
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc += cause.loc
    field = _dotted(loc) or "(top level)"
    more = len(errors) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    if first["type"] == "extra_forbidden":
        known = _fields_at(Experiment, loc[:-1])
        hint = did_you_mean(str(loc[-1]), known) if known else ""
        return f"{field}: unknown field{hint}{tail}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if first["type"] == "literal_error":
        msg = f"{msg}; got {_short(first.get('input'))}"
    return f"{field}: {msg}{tail}"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40


def _short(value: Any) -> str:
    # bounded repr: YAML aliases can make a small file expand into a huge (or cyclic) structure
    s = _REPR.repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found by walking `loc` (indices skip into sequence items)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part)
        if info is None:
            return []
        current = _model_in(info.annotation, typing)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any, typing) -> Any:
    """The BaseModel inside Optional[...] / tuple[..., ...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg, typing)
        if found is not None:
            return found
    return None


def json_schema() -> str:
    """The JSON Schema of experiment files, generated from the pydantic models."""
    schema = Experiment.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qbench experiment (schema_version 1)"
    return json.dumps(schema, indent=2, sort_keys=True)
