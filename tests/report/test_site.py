"""`qbench publish`: the static site of cards (qbench.report.site), on copies of tests/fixtures/run_small."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report.support import edit_json, get_row, replace_strings

from qbench import api

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
EVIL = '<script>alert(1)</script>"\'&'
_SCRIPT = Path(sys.executable).with_name("qbench")
QBENCH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "qbench.cli"]


@pytest.fixture
def site(tmp_path):
    """Two runs: the fixture, and a copy measured on other hardware whose model and one scheme have hostile
    names; published together."""
    a, b = tmp_path / "run_a", tmp_path / "run_b"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    for p in [b / "meta.json", *(b / "cells").glob("*.json")]:
        edit_json(p, lambda d: replace_strings(replace_strings(d, "minilm", "mini" + EVIL), "w4-g32", "w4" + EVIL))
    edit_json(b / "meta.json", lambda m: m.update(fingerprint="77aa00ff"))
    written = api.publish([a, b], tmp_path / "site")
    return tmp_path / "site", a, b, written


def test_the_site_has_an_index_a_feed_frontiers_and_every_card(site):
    out, a, b, written = site
    assert {"index.html", "feed.jsonl"} <= set(written)
    cards = sorted(k for k in written if k.startswith("runs/"))
    assert len(cards) == 2 and all((out / k).is_file() for k in cards)
    assert sorted(k for k in written if k.startswith("plots/")) == ["plots/frontier-1.png", "plots/frontier-2.png",
                                                                     "plots/frontier-3.png"]
    lines = [json.loads(x) for x in (out / "feed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2 * 2 * 2 * 2            # runs x models x schemes x workloads
    one = next(x for x in lines if (x["model"], x["scheme"], x["workload"]) == ("minilm", "w8a8-dyn", "code")
               and x["fingerprint"] == "0a1b2c3d")
    cos = get_row(a, "minilm__w8a8-dyn__code", "cosine_mean")
    sp = get_row(a, "minilm__w8a8-dyn__text", "speedup", "paired", 8)
    assert one["value"] == cos["value"] and one["ci"] == [cos["ci_low"], cos["ci_high"]]
    assert one["change"] == pytest.approx(1 - cos["value"]) and one["degradation"] == "1 − cosine"
    assert one["speedup"] == sp["value"] and one["speedup_ci"] == [sp["ci_low"], sp["ci_high"]]
    assert one["batch_size"] == 8 and one["card"].startswith("runs/") and (out / one["card"]).is_file()


def test_one_colour_per_scheme_across_the_sites_cards(site):
    out, *_ = site
    looks = {}
    for card in (out / "runs").glob("*/card.json"):
        for p in json.loads(card.read_text(encoding="utf-8"))["plots"]:
            for f in p["data"]["facets"]:
                for s in f["series"]:
                    if s.get("scheme") and p["name"] != "text_vs_code":
                        looks.setdefault(s["scheme"], set()).add((s["color"], s["marker"]))
    assert looks["w8a8-dyn"] and all(len(v) == 1 for v in looks.values()), looks
    assert len({next(iter(v)) for v in looks.values()}) == len(looks)      # and no two schemes alike


def test_different_hardware_is_marked_never_ranked_together(site):
    out, *_ = site
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "These results come from 2 different machines (hardware fingerprints 0a1b2c3d, 77aa00ff)" in html
    assert "0a1b2c3d" in html and "77aa00ff" in html


def test_hostile_names_render_as_text_everywhere(site):
    out, *_ = site
    pages = [out / "index.html", *(out / "runs").glob("*/card.html")]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<script>alert" not in text.lower(), page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "mini&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;" in index
    assert index.lower().count("<script") == 1                       # only the site's own sort/filter code
    lines = (out / "feed.jsonl").read_text(encoding="utf-8").splitlines()
    assert any(json.loads(x)["model"] == "mini" + EVIL for x in lines)     # data keeps the name exactly
    assert all(" " not in p.name and "<" not in p.name for p in (out / "runs").iterdir())


def test_publish_refuses_what_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([*QBENCH, "publish", str(tmp_path / "empty"), "--out", str(tmp_path / "site")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a qbench run directory" in r.stderr
    assert not (tmp_path / "site").exists()
