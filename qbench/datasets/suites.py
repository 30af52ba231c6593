"""Offline text and code corpora built from what ships with CPython (no network, no torch).

Chunking: a source's units (paragraphs for text, whole consecutive top-level statements
for code) are packed greedily into chunks of at most ``max_chars``. EVERY chunk, the last
of a source included, is within ``[min_chars, max_chars]``; shorter leftovers are dropped.
Oversized text paragraphs are cut at line (then word) boundaries; oversized code
statements are skipped, so every code chunk parses. Identical texts are kept once.

Split: a *source* goes to calibration when ``sha256(f"{seed}:{source}") % 100 < 25``
(about 25%), else to evaluation, so pools never share a source. Each pool (sorted by
source, then position) is shuffled by a ``random.Random`` seeded from ``seed`` and the
first N are kept: a smaller request is a prefix of a larger one. Same result on every run
and machine with the same Python minor version (same stdlib files).

builtin:code reads a deterministic stdlib subset: the ``STDLIB_FILE_LIMIT`` eligible files
with the smallest sha256 of their relative path (spread over all packages), read with
``tokenize.open``; files failing to parse are skipped. builtin:text always uses all
``pydoc_data.topics`` topics *plus* the docstrings of that same subset (so pool contents
never depend on requested sizes), dropping non-prose paragraphs (doctests, grammar,
tables: letters+spaces under 85%). User .txt files: one source per chunk
("name.txt:<chunk index>"), i.e. split by chunk index; .jsonl: one source per line.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import random
import re
import sysconfig
import textwrap
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from qbench.errors import DatasetError

BUILTIN_SUITES: dict[str, str] = {
    "builtin:text": "English prose: pydoc_data.topics plus stdlib docstrings (offline)",
    "builtin:code": "Python source of the standard library, chunked at top-level statements",
}
CALIBRATION_PERCENT = 25
STDLIB_FILE_LIMIT = 300
MAX_FILE_BYTES = 200_000
_EXCLUDED_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__",
                  "encodings", "pydoc_data"}  # encodings: generated codec tables
_PROSE_RATIO = 0.85


@dataclass(frozen=True)
class Sample:
    """One chunk of text; ``source`` is a machine-independent identifier."""

    text: str
    source: str
    sha256: str

    @classmethod
    def of(cls, text: str, source: str) -> "Sample":
        """Build a sample, computing the sha256 of the utf-8 text."""
        return cls(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _hash_of(hashes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Suite:
    """Calibration and evaluation samples drawn from disjoint sources."""

    name: str
    description: str
    calibration: tuple[Sample, ...]
    evaluation: tuple[Sample, ...]

    @property
    def calibration_hash(self) -> str:
        """sha256 over the calibration sample hashes, in order."""
        return _hash_of(s.sha256 for s in self.calibration)

    @property
    def evaluation_hash(self) -> str:
        """sha256 over the evaluation sample hashes, in order."""
        return _hash_of(s.sha256 for s in self.evaluation)

    @property
    def content_hash(self) -> str:
        """sha256 over both pool hashes (calibration first)."""
        return _hash_of([self.calibration_hash, self.evaluation_hash])

    def overlap(self) -> int:
        """Number of samples whose text sha or source appears in both pools."""
        shas = {s.sha256 for s in self.calibration} & {s.sha256 for s in self.evaluation}
        srcs = {s.source for s in self.calibration} & {s.source for s in self.evaluation}
        return sum(1 for s in self.calibration + self.evaluation
                   if s.sha256 in shas or s.source in srcs)


# ---------------------------------------------------------------- chunking
def _clean(text: str) -> str:
    return re.sub(r"\A(?:[ \t\f]*\n)+", "", text).rstrip()


def _pack(units: Iterable[str], sep: str, min_chars: int, max_chars: int) -> list[str]:
    """Greedily join consecutive units (each at most max_chars) into bounded chunks."""
    chunks: list[str] = []
    cur: list[str] = []
    for unit in units:
        while cur and len(_clean(sep.join(cur + [unit]))) > max_chars:
            if len(_clean(sep.join(cur))) >= min_chars:
                chunks.append(_clean(sep.join(cur)))
                cur = []
            else:
                cur.pop(0)  # too short to stand alone and too long to grow: drop it
        cur.append(unit)
    if cur and len(_clean(sep.join(cur))) >= min_chars:
        chunks.append(_clean(sep.join(cur)))
    return chunks


def _paragraphs(text: str, max_chars: int, prose_only: bool = False) -> Iterator[str]:
    """Blank-line separated paragraphs, oversized ones cut at line then word boundaries."""
    for para in re.split(r"\n[ \t\f]*\n", text):
        para = _clean(para)
        if not para:
            continue
        if prose_only:
            letters = sum(c.isalpha() or c == " " for c in para)
            if letters < _PROSE_RATIO * len(para) or ">>>" in para:
                continue
        if len(para) <= max_chars:
            yield para
            continue
        lines: list[str] = []
        for line in para.split("\n"):
            lines.extend(textwrap.wrap(line, max_chars) if len(line) > max_chars else [line])
        yield from _pack(lines, "\n", 1, max_chars)


def chunk_text(text: str, min_chars: int, max_chars: int, prose_only: bool = False) -> list[str]:
    """Chunk prose at paragraph boundaries into pieces of min_chars..max_chars characters."""
    return _pack(_paragraphs(text, max_chars, prose_only), "\n\n", min_chars, max_chars)


def chunk_code(source: str, tree: ast.Module, min_chars: int, max_chars: int) -> list[str]:
    """Chunk Python source into runs of whole consecutive top-level statements.

    Each statement owns the comments and blank lines above it; statements longer than
    max_chars are skipped, so every chunk parses on its own.
    """
    lines = source.split("\n")
    spans: list[list[int]] = []
    prev_end = 0
    for node in tree.body:
        end = node.end_lineno or node.lineno
        if spans and end <= spans[-1][1]:
            continue
        if spans and node.lineno <= spans[-1][1]:  # shares a line with the previous one
            spans[-1][1] = end
        else:
            spans.append([prev_end + 1, end])
        prev_end = end
    units = ["\n".join(lines[a - 1:b]) for a, b in spans]
    groups: list[list[str]] = [[]]
    for unit in units:  # oversized statements break the run of consecutive statements
        if len(_clean(unit)) > max_chars:
            groups.append([])
        else:
            groups[-1].append(unit)
    return [c for g in groups for c in _pack(g, "\n", min_chars, max_chars)]


# ---------------------------------------------------------------- builtin corpora
def python_files(root: Path, skip_dirs: set[str], max_bytes: int) -> list[tuple[str, Path]]:
    """Sorted (relative posix path, absolute path) of the .py files under root up to max_bytes, not
    descending into skip_dirs nor into names with a "-" (not packages, e.g. config-3.11-x86_64-linux-gnu)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and "-" not in d]
        for fn in filenames:
            path = Path(dirpath, fn)
            if fn.endswith(".py") and path.is_file() and path.stat().st_size <= max_bytes:
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def stdlib_files() -> list[tuple[str, Path]]:
    """The deterministic stdlib subset the built-in suites read: (relative posix path, absolute path).

    Public because the reference LM's training corpus (qbench.datasets.corpus) must exclude exactly these.
    """
    found = python_files(Path(sysconfig.get_paths()["stdlib"]), _EXCLUDED_DIRS, MAX_FILE_BYTES)
    found.sort(key=lambda item: (hashlib.sha256(item[0].encode()).hexdigest(), item[0]))
    return sorted(found[:STDLIB_FILE_LIMIT])


def read_python(path: Path) -> tuple[str, ast.Module] | None:
    """(source, syntax tree) of a Python file read with its declared encoding; None if it does not parse."""
    try:
        with tokenize.open(path) as fh:
            source = fh.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source, ast.parse(source)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return None


def _parsed_stdlib() -> Iterator[tuple[str, str, ast.Module]]:
    for rel, path in stdlib_files():
        parsed = read_python(path)
        if parsed is not None:
            yield rel, *parsed


def docstrings(tree: ast.Module, min_chars: int = 1) -> str:
    """The module's, classes' and functions' docstrings of at least min_chars, blank-line separated."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(n, clean=True) for n in ast.walk(tree) if isinstance(n, kinds))
    return "\n\n".join(d for d in docs if d and len(d) >= min_chars)


def _builtin_chunks(spec: str, min_chars: int, max_chars: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if spec == "builtin:text":
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip pydoc_data
            topics = {}
        for name in sorted(topics):
            chunks = chunk_text(topics[name], min_chars, max_chars, prose_only=True)
            out += [(f"pydoc_data.topics:{name}", c) for c in chunks]
    for rel, source, tree in _parsed_stdlib():
        if spec == "builtin:code":
            out += [(f"stdlib:{rel}", c) for c in chunk_code(source, tree, min_chars, max_chars)]
        else:
            chunks = chunk_text(docstrings(tree), min_chars, max_chars, prose_only=True)
            out += [(f"docstring:{rel}", c) for c in chunks]
    return out


def _user_chunks(path: Path, min_chars: int, max_chars: int) -> list[tuple[str, str]]:
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc}") from exc
    if path.suffix == ".txt":
        return [(f"{path.name}:{i}", c)
                for i, c in enumerate(chunk_text(content, min_chars, max_chars))]
    out = []
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path.name} line {lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DatasetError(f'{path.name} line {lineno}: expected an object with a "text" string')
        out.extend((f"{path.name}:{lineno}", c)
                   for c in chunk_text(record["text"], min_chars, max_chars))
    return out


@functools.lru_cache(maxsize=32)
def _samples(spec: str, min_chars: int, max_chars: int, stamp: tuple = ()) -> tuple[Sample, ...]:
    """All chunks of a spec, de-duplicated by text, sorted by (source, position)."""
    if spec in BUILTIN_SUITES:
        pairs = _builtin_chunks(spec, min_chars, max_chars)
    else:
        pairs = _user_chunks(Path(spec), min_chars, max_chars)
    seen: set[str] = set()
    samples = []
    for pos, (source, text) in sorted(enumerate(pairs), key=lambda p: (p[1][0], p[0])):
        sample = Sample.of(text, source)
        if sample.sha256 not in seen:
            seen.add(sample.sha256)
            samples.append(sample)
    return tuple(samples)


def is_calibration_source(source: str, seed: int) -> bool:
    """Whether a source belongs to the calibration pool (about 25% of sources)."""
    digest = hashlib.sha256(f"{seed}:{source}".encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % 100 < CALIBRATION_PERCENT


def pools(spec: str, *, min_chars: int = 600, max_chars: int = 2000,
          seed: int = 0) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """The full (calibration, evaluation) pools of a spec before sampling."""
    if spec in BUILTIN_SUITES:
        stamp: tuple = ()
    elif spec.startswith("builtin:") or Path(spec).suffix not in (".txt", ".jsonl"):
        valid = ", ".join(BUILTIN_SUITES)
        raise DatasetError(f"unknown dataset {spec!r}: use one of {valid}, "
                           "or a path to a .txt or .jsonl file")
    else:
        path = Path(spec).resolve()
        if not path.is_file():
            raise DatasetError(f"dataset file not found: {spec}")
        st = path.stat()
        spec, stamp = str(path), (st.st_mtime_ns, st.st_size)
    if not 1 <= min_chars <= max_chars:
        raise DatasetError(f"need 1 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
    everything = _samples(spec, min_chars, max_chars, stamp)
    is_cal = [is_calibration_source(s.source, seed) for s in everything]
    return (tuple(s for s, c in zip(everything, is_cal) if c),
            tuple(s for s, c in zip(everything, is_cal) if not c))


def _draw(pool: tuple[Sample, ...], size: int, seed: int, which: str, spec: str) -> tuple[Sample, ...]:
    if size < 0:
        raise DatasetError(f"{which}_size must be >= 0, got {size}")
    if size > len(pool):
        raise DatasetError(f"{spec}: {which} pool holds {len(pool)} samples, {size} requested "
                           "(lower the size or min_chars, or add data)")
    order = list(pool)
    random.Random(f"qbench:{which}:{seed}").shuffle(order)
    return tuple(order[:size])


def load_suite(spec: str, *, calibration_size: int, evaluation_size: int,
               min_chars: int = 600, max_chars: int = 2000, seed: int = 0) -> Suite:
    """Load a suite: ``builtin:text``, ``builtin:code`` or a .txt/.jsonl file path.

    Raises DatasetError for an unknown spec, a missing or malformed file, or a pool
    holding fewer samples than requested. Deterministic for a given Python minor version.
    """
    calib, evaluation = pools(spec, min_chars=min_chars, max_chars=max_chars, seed=seed)
    if spec in BUILTIN_SUITES:
        name, description = spec, BUILTIN_SUITES[spec]
    else:
        name, description = Path(spec).name, f"user dataset {Path(spec).name}"
    return Suite(
        name=name,
        description=description,
        calibration=_draw(calib, calibration_size, seed, "calibration", name),
        evaluation=_draw(evaluation, evaluation_size, seed, "evaluation", name),
    )
