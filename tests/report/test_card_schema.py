"""card.json against the versioned schema qbench/report/card.schema.json.

Every validation test runs twice: with the jsonschema package (skipped when it is not installed) and
with the built-in checker that validate_card falls back to without it.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from qbench.report import CARD_SCHEMA_VERSION, build_context, render_card
from qbench.report.card_schema import SUPPORTED, card_schema, validate_card

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "run_small"
EXAMPLE = ROOT / "reports" / "example"


def _jsonschema_or_skip(flag):
    if flag:
        pytest.importorskip("jsonschema")
    return flag


@pytest.fixture(params=[True, False], ids=["jsonschema", "builtin"])
def use_js(request):
    return _jsonschema_or_skip(request.param)


@pytest.fixture(scope="module")
def small_card(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("schema") / "run_small"
    shutil.copytree(FIXTURE, run)
    render_card(run)
    return json.loads((run / "card.json").read_text(encoding="utf-8"))


def test_schema_identity():
    s = card_schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "v2" in s["$id"] and s["title"] == "qbench card v2"
    assert s["properties"]["card_schema_version"] == {"const": CARD_SCHEMA_VERSION,
                                                      "description": "Version of this card format."}
    assert s["additionalProperties"] is False
    assert set(s["required"]) == {"card_schema_version", "title", "overview", "summary", "setup", "hardware",
                                  "results", "quant_maps", "caveats", "reproduce", "glossary", "plots"}
    # gates and the workload contrast are left out of cards that have none
    assert set(s["properties"]) - set(s["required"]) == {"gates", "gates_section", "contrast", "pairs", "training", "mixed",
                                                                 "profile"}
    card_schema()["title"] = "changed"  # callers get a fresh copy
    assert card_schema()["title"] == "qbench card v2"


def test_schema_is_valid_draft_2020_12():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(card_schema())


def _keywords(node, out: set) -> set:
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(k)
            if k in ("properties", "patternProperties", "$defs"):
                for sub in v.values():
                    _keywords(sub, out)
            elif k not in ("const", "enum", "required", "description", "title"):
                _keywords(v, out)
    elif isinstance(node, list):
        for sub in node:
            _keywords(sub, out)
    return out


def test_builtin_checker_covers_every_keyword_of_the_schema():
    assert _keywords(card_schema(), set()) <= SUPPORTED


def test_fixture_card_valid(small_card, use_js):
    assert validate_card(small_card, use_jsonschema=use_js) == []


def test_example_card_valid(use_js):
    committed = json.loads((EXAMPLE / "card.json").read_text(encoding="utf-8"))
    assert validate_card(committed, use_jsonschema=use_js) == []
    fresh = json.loads(json.dumps(build_context(EXAMPLE)))  # what the current code produces
    assert validate_card(fresh, use_jsonschema=use_js) == []


def test_bare_run_card_valid(tmp_path, use_js):
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")
    assert validate_card(json.loads(json.dumps(build_context(tmp_path))), use_jsonschema=use_js) == []


GATES = [{"metric": "speedup", "min": 1.0, "scheme": "w8a8-dyn", "batch_size": 8, "name": "int8 is faster"},
         {"metric": "cosine_mean", "min": 0.99, "use": "ci_low"},
         {"metric": "kl_mean", "max": 0.1},  # encoder run: no data
         {"metric": "no_such_metric", "max": 1}]  # invalid gate: still a verdict


def test_card_with_gates_valid(tmp_path, use_js):
    run = tmp_path / "run_small"
    shutil.copytree(FIXTURE, run)
    meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    meta["experiment"]["gates"] = GATES
    (run / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    render_card(run)
    card = json.loads((run / "card.json").read_text(encoding="utf-8"))
    assert len(card["gates"]) == len(GATES) and card["gates_section"]["failed"] is True
    assert {v["status"] for v in card["gates"]} == {"pass", "fail", "no_data"}
    assert validate_card(card, use_jsonschema=use_js) == []
    card["gates"][0]["status"] = "passed"
    card["gates_section"]["table"]["rows"][0]["cells"][0] = 1
    assert validate_card(card, use_jsonschema=use_js) == [
        "$.gates[0].status: 'passed' is not one of ['pass', 'fail', 'no_data']",
        "$.gates_section.table.rows[0].cells[0]: 1 is not of type 'string'"]


def test_default_validator_accepts_and_rejects(small_card):
    assert validate_card(small_card) == []
    assert validate_card({}) != []


@pytest.mark.parametrize("section", ["title", "summary", "setup", "hardware", "results", "quant_maps",
                                     "caveats", "reproduce", "glossary", "plots", "card_schema_version"])
def test_missing_section_fails(small_card, use_js, section):
    card = copy.deepcopy(small_card)
    del card[section]
    assert validate_card(card, use_jsonschema=use_js) == [f"$: '{section}' is a required property"]


MUTATIONS = [  # (edit, expected path in the message, expected words)
    (lambda c: c["title"].__setitem__("date", 20250115), "$.title.date", "is not of type 'string'"),
    (lambda c: c["results"]["speed"]["rows"][0]["cells"].__setitem__(1, 3), "$.results.speed.rows[0].cells[1]",
     "is not of type 'string'"),
    (lambda c: c["results"]["quality"]["rows"][2].__setitem__("flag", "yes"), "$.results.quality.rows[2].flag",
     "is not of type 'boolean'"),
    (lambda c: c["setup"]["models"].pop("align"), "$.setup.models", "'align' is a required property"),
    (lambda c: c["quant_maps"][0].__setitem__("total", "13"), "$.quant_maps[0].total", "not of type 'integer'"),
    (lambda c: c["quant_maps"][0].__setitem__("mismatches", True), "$.quant_maps[0].mismatches",
     "not of type 'integer'"),
    (lambda c: c.__setitem__("caveats", "none"), "$.caveats", "is not of type 'array'"),
    (lambda c: c["plots"][0]["data"]["facets"][0]["series"][0]["points"][0].__setitem__(0, "1.43"),
     "$.plots[0].data.facets[0].series[0].points[0][0]", "is not of type 'number', 'null'"),
    (lambda c: c["plots"][0]["data"]["facets"][0]["series"][0].__setitem__("color", "blue"),
     "$.plots[0].data.facets[0].series[0].color", "does not match"),
    (lambda c: c["plots"][3]["data"].__setitem__("facets", []), "$.plots[3].data.facets", "non-empty"),
    (lambda c: c["plots"][2].pop("alt"), "$.plots[2]", "'alt' is a required property"),
    (lambda c: c["overview"]["models"][0].pop("table"), "$.overview.models[0]", "'table' is a required property"),
    (lambda c: c["plots"][1].__setitem__("name", "histogram"), "$.plots[1].name", "is not one of"),
    (lambda c: c["results"]["speed"].__setitem__("align", "lxr"), "$.results.speed.align", "does not match"),
    (lambda c: c.__setitem__("extra", {}), "$", "Additional properties are not allowed ('extra' was unexpected)"),
    (lambda c: c["title"].__setitem__("colour", "red"), "$.title", "'colour' was unexpected"),
    (lambda c: c.__setitem__("card_schema_version", 1), "$.card_schema_version", "2 was expected"),
    (lambda c: c.__setitem__("card_schema_version", True), "$.card_schema_version", "2 was expected"),
]


@pytest.mark.parametrize("edit,path,words", MUTATIONS, ids=[m[1] + " " + m[2] for m in MUTATIONS])
def test_wrong_type_fails_naming_the_path(small_card, use_js, edit, path, words):
    card = copy.deepcopy(small_card)
    edit(card)
    errors = validate_card(card, use_jsonschema=use_js)
    assert errors, "mutated card passed validation"
    assert any(e.startswith(path + ": ") and words in e for e in errors), errors


def test_builtin_and_jsonschema_agree(small_card):
    pytest.importorskip("jsonschema")
    card = copy.deepcopy(small_card)
    for edit, _, _ in MUTATIONS:
        edit(card)
    del card["summary"]
    errors = validate_card(card, use_jsonschema=True)
    assert len(errors) >= len(MUTATIONS)
    assert errors == validate_card(card, use_jsonschema=False)
