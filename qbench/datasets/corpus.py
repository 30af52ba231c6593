"""The training corpus of qbench's reference LM (reflm): Python code and prose that ship with CPython and with
qbench's runtime dependencies, and never a source file that the built-in suites draw from.

* code: the standard library files *outside* the subset that ``builtin:text`` / ``builtin:code`` read
  (:func:`qbench.datasets.suites.stdlib_files`), and the ``.py`` files of the packages in ``PACKAGES``;
* prose: the docstrings of those same files, and the long descriptions in the packages' metadata.

It lives here, beside the suites, because the guarantee that matters (training never sees an evaluation or
calibration source) is a property of both sides, and only this package knows the suites' side. The
training script (``qbench.tools.train_reflm``) receives the documents; it does not walk files itself.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from qbench.datasets.suites import docstrings, python_files, read_python, stdlib_files

# qbench's runtime dependencies whose Python sources and docs feed the training corpus
PACKAGES = ("numpy", "pandas", "matplotlib", "jinja2", "click", "typer", "pydantic", "yaml", "tqdm",
            "psutil")
DISTRIBUTIONS = {"yaml": "PyYAML"}  # import name -> distribution name where they differ
SKIP_DIRS = {"test", "tests", "testing", "__pycache__", "idlelib", "site-packages", "lib2to3", "encodings",
             "pydoc_data", "_vendor", "_vendored"}


@dataclass(frozen=True)
class Doc:
    """One training document."""

    source: str      # machine-independent id, e.g. "stdlib:json/decoder.py" or "numpy:linalg/_linalg.py"
    kind: str        # code | text
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def heldout_sources() -> set[str]:
    """Source ids of every file the built-in suites may draw from (calibration and evaluation)."""
    return {f"stdlib:{rel}" for rel, _ in stdlib_files()}


def training_corpus(max_file_bytes: int) -> list[Doc]:
    """Training documents from .py files of at most `max_file_bytes`, sorted by (kind, source); never a file
    of the built-in suites (checked)."""
    docs: list[Doc] = []
    for name, root, rels in _roots(max_file_bytes):
        for rel in rels:
            parsed = read_python(root / rel)
            if parsed is None:
                continue
            src, tree = parsed
            source = f"{name}:{rel}"
            docs.append(Doc(source, "code", src))
            prose = docstrings(tree, min_chars=80)
            if prose:
                docs.append(Doc(source + "#docstrings", "text", prose))
    docs += _metadata_docs()
    docs.sort(key=lambda d: (d.kind, d.source))
    held = heldout_sources()
    leaked = [d.source for d in docs if d.source.split("#")[0] in held]
    if leaked:  # cannot happen by construction; guards against edits to either side
        raise RuntimeError(f"training corpus overlaps the evaluation suites: {leaked[:3]}")
    return docs


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in PACKAGES (None when absent): the corpus depends on them."""
    return {p: _version(p) for p in PACKAGES}


def _roots(max_file_bytes: int) -> list[tuple[str, Path, list[str]]]:
    """(name, root folder, relative paths of its .py files): the stdlib minus the suites' subset, then each
    installed package of PACKAGES."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    excluded = {rel for rel, _ in stdlib_files()}
    roots = [("stdlib", stdlib, [rel for rel, _ in python_files(stdlib, SKIP_DIRS, max_file_bytes)
                                 if rel not in excluded])]
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        roots.append((pkg, root, [rel for rel, _ in python_files(root, SKIP_DIRS, max_file_bytes)]))
    return roots


def _metadata_docs() -> list[Doc]:
    """The packages' long descriptions (200 characters or more) from their installed metadata."""
    docs = []
    for pkg in PACKAGES:
        try:
            meta = importlib.metadata.metadata(DISTRIBUTIONS.get(pkg, pkg))
        except importlib.metadata.PackageNotFoundError:
            continue
        body = meta.get_payload() or meta.get("Description") or ""
        if len(body) >= 200:
            docs.append(Doc(f"{pkg}:METADATA", "text", body))
    return docs


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(pkg, pkg))
    except importlib.metadata.PackageNotFoundError:
        return None
