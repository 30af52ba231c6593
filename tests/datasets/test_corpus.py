"""The reference LM's training corpus (qbench.datasets.corpus) never holds a file the built-in suites read."""
from __future__ import annotations

import pytest

from qbench.datasets import corpus, heldout_sources, pools, training_corpus


@pytest.fixture(scope="module")
def docs():
    return training_corpus(max_file_bytes=20_000)   # the --small size: a few seconds


def test_heldout_sources_cover_every_file_the_suites_read():
    held = heldout_sources()
    code = {s.source for pool in pools("builtin:code") for s in pool}
    text = {"stdlib:" + s.source.split(":", 1)[1] for pool in pools("builtin:text") for s in pool
            if s.source.startswith("docstring:")}
    assert code and text and code <= held and text <= held


def test_corpus_is_disjoint_from_the_suites_and_sorted(docs):
    held = heldout_sources()
    assert docs and not {d.source.split("#")[0] for d in docs} & held
    assert not any(d.source.startswith("pydoc_data") for d in docs)
    assert [(d.kind, d.source) for d in docs] == sorted((d.kind, d.source) for d in docs)
    assert {d.kind for d in docs} == {"code", "text"}
    assert all(d.kind == "text" for d in docs if d.source.endswith(("#docstrings", ":METADATA")))
    assert any(d.source.startswith("stdlib:") for d in docs) and any(d.source.startswith("numpy:") for d in docs)


def test_an_overlap_is_refused(monkeypatch, docs):
    leaked = next(d.source for d in docs if d.kind == "code")
    monkeypatch.setattr(corpus, "heldout_sources", lambda: {leaked})
    with pytest.raises(RuntimeError, match="overlaps the evaluation suites"):
        training_corpus(max_file_bytes=20_000)


def test_package_versions_name_every_corpus_package():
    versions = corpus.package_versions()
    assert list(versions) == list(corpus.PACKAGES) and versions["numpy"]
