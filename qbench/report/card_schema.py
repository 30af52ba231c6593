"""The versioned JSON Schema of card.json (qbench/report/card.schema.json) and a validator for it.

validate_card uses the jsonschema package when it is importable; without it, a small built-in
checker covers exactly the keywords the shipped schema uses, so validation never needs a new
dependency. Never imports torch.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parent / "card.schema.json"
# keywords the built-in checker understands; a test keeps the shipped schema inside this set
SUPPORTED = {"$schema", "$id", "$defs", "$ref", "title", "description", "type", "const", "enum", "pattern",
             "minimum", "required", "properties", "patternProperties", "additionalProperties", "items",
             "minItems", "maxItems", "allOf", "if", "then", "else"}


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_FILE.read_text(encoding="utf-8")


def card_schema() -> dict:
    """The card.json JSON Schema (draft 2020-12) shipped with qbench, as a fresh dict."""
    return json.loads(_schema_text())


def validate_card(card: dict, use_jsonschema: bool | None = None) -> list[str]:
    """Check a card context (card.json loaded, or build_context's result) against the shipped schema.

    Returns error messages, each "<path>: <problem>" with a JSON path such as
    "$.results.speed.rows[0].cells[1]"; an empty list means the card is valid. use_jsonschema:
    None = the jsonschema package when importable, else the built-in checker; True/False forces one.
    """
    schema = card_schema()
    if use_jsonschema is None:
        try:
            import jsonschema  # noqa: F401
            use_jsonschema = True
        except ImportError:
            use_jsonschema = False
    if use_jsonschema:
        errors = _with_jsonschema(card, schema)
    else:
        errors = []
        _check(card, schema, (), schema, errors)
    return [f"{_path(p)}: {m}" for p, m in sorted(set(errors), key=lambda e: (_path(e[0]), e[1]))]


def _with_jsonschema(card, schema) -> list:
    from jsonschema import Draft202012Validator

    out = []
    for e in Draft202012Validator(schema).iter_errors(card):
        msg, full = e.message, repr(e.instance)
        if msg.startswith(full):  # keep messages short: a whole section is not repeated back
            msg = _short(e.instance) + msg[len(full):]
        out.append((tuple(e.absolute_path), msg))
    return out


def _path(parts) -> str:
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p):
            out += f".{p}"
        else:
            out += f"[{p!r}]"
    return out


def _short(x, limit: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _types(t) -> str:
    return ", ".join(repr(x) for x in (t if isinstance(t, list) else [t]))


def _is(x, t: str) -> bool:
    if t == "integer":
        return isinstance(x, int) and not isinstance(x, bool) or isinstance(x, float) and x.is_integer()
    if t == "number":
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    return isinstance(x, {"string": str, "boolean": bool, "null": type(None), "array": list,
                          "object": dict}[t])


def _same(a, b) -> bool:
    """JSON equality: true is not 1 and false is not 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _check(x, s: dict, path: tuple, root: dict, out: list) -> None:
    """Built-in checker for the keywords in SUPPORTED; appends (path, message) to out."""
    if "$ref" in s:
        target = root
        for part in s["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        _check(x, target, path, root, out)
    if "type" in s and not any(_is(x, t) for t in (s["type"] if isinstance(s["type"], list) else [s["type"]])):
        out.append((path, f"{_short(x)} is not of type {_types(s['type'])}"))
        return
    if "const" in s and not _same(x, s["const"]):
        out.append((path, f"{s['const']!r} was expected"))
    if "enum" in s and not any(_same(x, v) for v in s["enum"]):
        out.append((path, f"{_short(x)} is not one of {s['enum']!r}"))
    if "pattern" in s and isinstance(x, str) and not re.search(s["pattern"], x):
        out.append((path, f"{_short(x)} does not match {s['pattern']!r}"))
    if "minimum" in s and _is(x, "number") and x < s["minimum"]:
        out.append((path, f"{x!r} is less than the minimum of {s['minimum']!r}"))
    if isinstance(x, dict):
        out.extend((path, f"{k!r} is a required property") for k in s.get("required", []) if k not in x)
        props, pats, extra = s.get("properties", {}), s.get("patternProperties", {}), []
        for k, v in x.items():
            subs = ([props[k]] if k in props else []) + [p for r, p in pats.items() if re.search(r, k)]
            for sub in subs:
                _check(v, sub, path + (k,), root, out)
            ap = s.get("additionalProperties", True)
            if not subs and ap is False:
                extra.append(k)
            elif not subs and isinstance(ap, dict):
                _check(v, ap, path + (k,), root, out)
        if extra:
            out.append((path, f"Additional properties are not allowed ({', '.join(map(repr, extra))} "
                              f"{'was' if len(extra) == 1 else 'were'} unexpected)"))
    if isinstance(x, list):
        if len(x) < s.get("minItems", 0):
            out.append((path, f"{_short(x)} {'should be non-empty' if s['minItems'] == 1 else 'is too short'}"))
        if "maxItems" in s and len(x) > s["maxItems"]:
            out.append((path, f"{_short(x)} is too long"))
        if isinstance(s.get("items"), dict):
            for i, v in enumerate(x):
                _check(v, s["items"], path + (i,), root, out)
    for sub in s.get("allOf", []):
        _check(x, sub, path, root, out)
    if "if" in s:
        probe: list = []
        _check(x, s["if"], path, root, probe)
        branch = s.get("then") if not probe else s.get("else")
        if branch:
            _check(x, branch, path, root, out)
