"""Tests for qbench.datasets.suites (offline corpora, disjoint calibration/evaluation)."""
from __future__ import annotations

import ast
import hashlib
import json
import re

import pytest

from qbench.datasets import BUILTIN_SUITES, Sample, Suite, load_suite, pools
from qbench.datasets.suites import chunk_code, chunk_text
from qbench.errors import DatasetError

BUILTINS = ["builtin:text", "builtin:code"]


def _load(spec, calib=16, evaluation=32, **kw):
    return load_suite(spec, calibration_size=calib, evaluation_size=evaluation, **kw)


def _prose(n_paragraphs: int, words: int = 30) -> str:
    vocab = ["alpha", "beta", "gamma", "delta", "model", "weights", "quantized", "text"]
    paras = []
    for i in range(n_paragraphs):
        paras.append(" ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(words)) + f" number {i}.")
    return "\n\n".join(paras)


@pytest.mark.parametrize("spec", BUILTINS)
def test_deterministic(spec):
    a, b = _load(spec), _load(spec)
    assert a == b
    assert a.content_hash == b.content_hash
    assert _load(spec, seed=1).content_hash != a.content_hash


@pytest.mark.parametrize("spec", BUILTINS)
def test_pools_disjoint(spec):
    calib, evaluation = pools(spec)
    assert calib and evaluation
    assert not {s.source for s in calib} & {s.source for s in evaluation}
    assert not {s.sha256 for s in calib} & {s.sha256 for s in evaluation}
    assert _load(spec).overlap() == 0
    # roughly a quarter of sources go to calibration
    n_cal, n_eval = len({s.source for s in calib}), len({s.source for s in evaluation})
    assert 0.15 < n_cal / (n_cal + n_eval) < 0.35


def test_overlap_detects_shared_source_and_text():
    a, b, c = Sample.of("x", "s1"), Sample.of("y", "s1"), Sample.of("x", "s2")
    assert Suite("n", "d", (a,), (b,)).overlap() == 2
    assert Suite("n", "d", (a,), (c,)).overlap() == 2
    assert Suite("n", "d", (a,), (Sample.of("z", "s3"),)).overlap() == 0


@pytest.mark.parametrize("spec", BUILTINS)
def test_sizes_honored_and_prefix_stable(spec):
    small, big = _load(spec, 3, 7), _load(spec, 10, 40)
    assert (len(small.calibration), len(small.evaluation)) == (3, 7)
    assert (len(big.calibration), len(big.evaluation)) == (10, 40)
    assert big.calibration[:3] == small.calibration
    assert big.evaluation[:7] == small.evaluation
    assert len({s.sha256 for s in big.evaluation}) == 40


@pytest.mark.parametrize("spec", BUILTINS)
@pytest.mark.parametrize("bounds", [(600, 2000), (300, 800)])
def test_chunk_lengths_within_bounds(spec, bounds):
    # Rule: every chunk, including the last of a source, is within [min_chars, max_chars].
    lo, hi = bounds
    calib, evaluation = pools(spec, min_chars=lo, max_chars=hi)
    for s in calib + evaluation:
        assert lo <= len(s.text) <= hi, (s.source, len(s.text))
        assert s.sha256 == hashlib.sha256(s.text.encode("utf-8")).hexdigest()


def test_code_chunks_parse():
    calib, evaluation = pools("builtin:code")
    for s in calib + evaluation:
        ast.parse(s.text)
        assert s.source.startswith("stdlib:") and s.source.endswith(".py")
        assert not re.search(r"(^|/)(tests?|idlelib|lib2to3|site-packages)/", s.source)


def test_text_chunks_are_prose():
    calib, evaluation = pools("builtin:text")
    for s in calib + evaluation:
        ratio = sum(c.isalpha() or c == " " for c in s.text) / len(s.text)
        assert ratio > 0.8, s.source
    sources = {s.source.split(":")[0] for s in calib + evaluation}
    assert "pydoc_data.topics" in sources


@pytest.mark.parametrize("spec", BUILTINS)
def test_sources_are_not_absolute(spec):
    calib, evaluation = pools(spec)
    for s in calib + evaluation:
        assert not s.source.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", s.source)
        assert "site-packages" not in s.source and "\\" not in s.source


def test_builtin_code_is_read_once_per_process():
    """The standard library is chunked once: another seed or pool size reuses the cached chunk list (checked
    by the cache's own counters, not by a timing, which a busy machine would make flaky)."""
    from qbench.datasets import suites
    suites._samples.cache_clear()
    first = pools("builtin:code")
    assert suites._samples.cache_info().misses == 1
    again = pools("builtin:code", seed=5)
    info = suites._samples.cache_info()
    assert info.misses == 1 and info.hits >= 1
    assert {s.sha256 for s in first[0] + first[1]} == {s.sha256 for s in again[0] + again[1]}


def test_builtin_suites_listed():
    assert set(BUILTIN_SUITES) == set(BUILTINS)
    assert all(BUILTIN_SUITES.values())


def test_chunk_text_paragraph_boundaries():
    text = _prose(20)
    chunks = chunk_text(text, 200, 500)
    assert chunks and all(200 <= len(c) <= 500 for c in chunks)
    paragraphs = set(text.split("\n\n"))
    for c in chunks:
        assert all(p in paragraphs for p in c.split("\n\n"))
    long_para = "word " * 1000
    assert all(len(c) <= 500 for c in chunk_text(long_para, 100, 500))


def test_chunk_code_skips_oversized_and_keeps_whole_statements():
    big = "def big():\n" + "    x = 1\n" * 300
    small = "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n\n" for i in range(30))
    src = small + big + small
    chunks = chunk_code(src, ast.parse(src), 100, 400)
    assert chunks
    for c in chunks:
        assert 100 <= len(c) <= 400
        assert "def big" not in c
        assert all(isinstance(n, ast.FunctionDef) for n in ast.parse(c).body)


def test_txt_user_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(_prose(200), encoding="utf-8")
    suite = load_suite(str(path), calibration_size=3, evaluation_size=10, min_chars=200, max_chars=600)
    assert suite.name == "notes.txt"
    assert (len(suite.calibration), len(suite.evaluation)) == (3, 10)
    assert suite.overlap() == 0
    assert all(re.fullmatch(r"notes\.txt:\d+", s.source) for s in suite.calibration + suite.evaluation)
    again = load_suite(str(path), calibration_size=3, evaluation_size=10, min_chars=200, max_chars=600)
    assert again == suite


def test_jsonl_user_file(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": f"Record {i}. " + _prose(3, 40), "id": i}) for i in range(60)]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    suite = load_suite(str(path), calibration_size=5, evaluation_size=20, min_chars=200, max_chars=2000)
    assert suite.overlap() == 0
    for s in suite.calibration + suite.evaluation:
        assert re.fullmatch(r"data\.jsonl:\d+", s.source)
        assert 200 <= len(s.text) <= 2000


def test_jsonl_bad_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok " * 100}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2"):
        _load(str(path), 1, 1)
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2.*text"):
        _load(str(path), 1, 1)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        _load(str(tmp_path / "nope.jsonl"))
    assert DatasetError("x").exit_code == 2


def test_too_few_samples_mentions_counts(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(_prose(40), encoding="utf-8")
    calib, evaluation = pools(str(path), min_chars=200, max_chars=600)
    with pytest.raises(DatasetError) as err:
        load_suite(str(path), calibration_size=0, evaluation_size=len(evaluation) + 1,
                   min_chars=200, max_chars=600)
    assert f"holds {len(evaluation)}" in str(err.value)
    assert f"{len(evaluation) + 1} requested" in str(err.value)
    with pytest.raises(DatasetError, match=r"calibration pool holds \d+ samples, 100000 requested"):
        _load("builtin:code", 100000, 1)


@pytest.mark.parametrize("spec", ["builtin:poetry", "wikitext", "data.csv"])
def test_unknown_spec_lists_valid(spec):
    with pytest.raises(DatasetError) as err:
        _load(spec)
    assert "builtin:text" in str(err.value) and "builtin:code" in str(err.value)


def test_invalid_bounds():
    with pytest.raises(DatasetError):
        _load("builtin:text", min_chars=900, max_chars=800)
