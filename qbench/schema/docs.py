"""The README's reference table of experiment fields, generated from the pydantic models.

    python -m qbench.schema.docs            # print the table
    python -m qbench.schema.docs --write    # replace it in README.md between the markers
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from qbench.schema.experiment import Experiment

START, END = "<!-- experiment-reference:start -->", "<!-- experiment-reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(info) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "see below"
    d = info.default
    if d is PydanticUndefined:
        return "required"
    if isinstance(d, tuple):
        d = list(d)
    return f"`{d}`" if d is not None else "null"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(model):
        if model in seen:
            return
        seen.append(model)
        for info in model.model_fields.values():
            for sub in _submodels(info.annotation):
                walk(sub)

    walk(root)
    return seen


def _submodels(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _submodels(arg)


def reference_table() -> str:
    """Markdown: one table per model of the experiment schema."""
    out = []
    for model in _models(Experiment):
        out.append(f"#### {model.__name__}\n\n{(model.__doc__ or '').strip()}\n")
        out.append("| field | type | default | description |\n|---|---|---|---|")
        for name, info in model.model_fields.items():
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {desc} |")
        out.append("")
    return "\n".join(out).strip() + "\n"


def replace_in(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_table()}{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        readme.write_text(replace_in(readme.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(reference_table())
