"""End to end on tiny local models: plan -> cells on disk -> results -> card; failures and resume."""
from __future__ import annotations

import json

import pytest

from qbench import api
from qbench.results import load_results
from tests.runner.support import SCHEMES, write_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    exp = write_experiment(tmp, {"gpt2": tiny_models["gpt2"], "bert": tiny_models["bert"]}, SCHEMES)
    outcome = api.run(exp, out=tmp / "reports", progress=False, log=lambda s: None)
    return exp, outcome


def test_every_cell_finishes_and_is_on_disk(tiny_run):
    _, outcome = tiny_run
    assert outcome.status == "ok"
    cells = sorted(p.stem for p in (outcome.run_dir / "cells").glob("*.json"))
    assert cells == sorted(f"{m}__{s}__{w}" for m in ("gpt2", "bert") for s in ("w8a8", "w4g16")
                           for w in ("text", "code"))
    for kind in ("card.md", "card.html", "card.json", "results.csv", "meta.json"):
        assert (outcome.run_dir / kind).is_file()


def test_rows_carry_measurements_for_each_task(tiny_run):
    _, outcome = tiny_run
    table = load_results(outcome.run_dir)
    frame = table.frame()
    gpt = frame[(frame.model == "gpt2") & (frame.scheme == "w8a8") & (frame.workload == "code")]
    metrics = set(gpt.metric)
    assert {"ppl", "log_ppl_ratio", "kl_mean", "kl_p99", "top1_agreement", "latency_ms", "speedup",
            "throughput_tok_s", "weight_bytes", "peak_rss_bytes"} <= metrics
    bert = frame[(frame.model == "bert") & (frame.scheme == "w4g16") & (frame.workload == "text")]
    assert {"cosine_mean", "cosine_min", "nn_agreement"} <= set(bert.metric)
    # one timing row per variant and batch size, each from the configured repeats
    lat = frame[(frame.metric == "latency_ms")]
    assert set(lat.batch_size.dropna().astype(int)) == {1, 4}
    assert (lat.n == 3).all()
    assert (lat.ci_low <= lat.value).all() and (lat.value <= lat.ci_high).all()
    # quantized weights are smaller than the baseline's
    wb = frame[frame.metric == "weight_bytes"].pivot_table(index=["model", "scheme"], columns="variant",
                                                           values="value", aggfunc="first")
    assert (wb["quantized"] < wb["baseline"]).all()
    # kernels recorded on every row: the first of the preference order this host can run (int8_native and
    # int4_wo_native with AVX-512 VNNI and a C compiler)
    from qbench.engine.api import activation_spec, weight_spec
    from qbench.engine.kernels import select_kernel
    from qbench.schema import load_experiment

    for scheme in load_experiment(tiny_run[0]).schemes:
        expected = select_kernel(weight_spec(scheme), activation_spec(scheme), "cpu").name
        assert set(frame[frame.scheme == scheme.name].kernel) == {expected}
    native = api.kernels()["int8_native"]
    if native.supports(weight_spec(load_experiment(tiny_run[0]).schemes[0]),
                       activation_spec(load_experiment(tiny_run[0]).schemes[0]), "cpu") is None:
        assert set(frame[frame.scheme == "w8a8"].kernel) == {"int8_native"}


def test_quantized_lm_drifts_but_stays_close(tiny_run):
    _, outcome = tiny_run
    f = load_results(outcome.run_dir).frame()
    kl = f[(f.model == "gpt2") & (f.metric == "kl_mean")].set_index(["scheme", "workload"]).value
    assert (kl > 0).all()
    # 8-bit per-channel moves the distribution less than 4-bit on the same tokens
    for wl in ("text", "code"):
        assert kl[("w8a8", wl)] < kl[("w4g16", wl)]


def test_meta_records_hardware_plan_and_provenance(tiny_run):
    exp, outcome = tiny_run
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["finished"]
    assert meta["baseline"] == {"requested": "fp32", "resolved": "fp32", "note": ""}
    assert meta["hardware"]["logical_cores"] >= 1 and len(meta["fingerprint"]) == 8
    assert meta["models"]["gpt2"]["task"] == "causal_lm" and meta["models"]["bert"]["task"] == "encoder"
    assert len(meta["plan"]["cells"]) == 8
    assert meta["experiment"]["schemes"][0]["name"] == "w8a8"


def test_failed_cell_is_recorded_and_others_still_run(tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["bert"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # corrupt: config and tokenizer still read fine
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"], "broken": broken}, SCHEMES, name="fail")
    outcome = api.run(exp, out=tmp_path / "r", progress=False, log=lambda s: None)
    assert outcome.status == "partial"
    failed = {c for c, s in outcome.statuses.items() if s == "failed"}
    assert failed == {f"broken__{s}__{w}" for s in ("w8a8", "w4g16") for w in ("text", "code")}
    assert sum(s == "ok" for s in outcome.statuses.values()) == 4
    cell = json.loads((outcome.run_dir / "cells" / "broken__w8a8__text.json").read_text())
    assert cell["reason"].startswith("ModelError") and "could not be loaded" in cell["reason"]
    assert "broken__w8a8__text" in (outcome.run_dir / "card.md").read_text()
    ok = json.loads((outcome.run_dir / "cells" / "gpt2__w8a8__text.json").read_text())
    assert ok["status"] == "ok" and any(r["metric"] == "kl_mean" for r in ok["rows"])


def _preflight_error(exp, tmp_path):
    from qbench.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        api.run(exp, out=tmp_path / "never", progress=False, log=lambda s: None)
    assert not (tmp_path / "never").exists()  # rejected before any work or output
    return str(err.value)


def test_impossible_configurations_fail_before_work(tiny_models, tmp_path):
    forced = SCHEMES + """\
  - name: forced-bad
    weights: {bits: 4, granularity: per_group, group_size: 16}
    activations: {bits: 8}
    kernel: int8_int_mm
"""
    msg = _preflight_error(write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, forced, name="k"), tmp_path)
    assert "schemes[2].kernel" in msg and "per_group" in msg
    # n_embd is 64: a group of 24 columns does not divide it
    grouped = SCHEMES.replace("group_size: 16", "group_size: 24")
    msg = _preflight_error(write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, grouped, name="g"), tmp_path)
    assert "schemes[1].weights.group_size" in msg and "24 does not divide the 64" in msg
    long = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, SCHEMES, name="long")
    long.write_text(long.read_text().replace("seq_len: 32", "seq_len: 100"))
    msg = _preflight_error(long, tmp_path)
    assert "measure.seq_len" in msg and "context of gpt2 (64)" in msg


def test_exclusions_that_match_nothing_warn(tiny_models, tmp_path):
    schemes = SCHEMES.replace("granularity: per_token}", "granularity: per_token}\n    exclude: ['*.nope.*']")
    exp = write_experiment(tmp_path, {"bert": tiny_models["bert"]}, schemes, name="warn")
    lines = []
    api.run(exp, out=tmp_path / "w", progress=False, log=lines.append)
    assert any("schemes[0].exclude: '*.nope.*' matches no quantizable module of bert" in x for x in lines)


def test_resume_runs_only_missing_cells_and_refuses_changed_experiment(tiny_models, tmp_path):
    exp = write_experiment(tmp_path, {"bert": tiny_models["bert"]}, SCHEMES, name="resume")
    first = api.run(exp, out=tmp_path / "r", progress=False, log=lambda s: None)
    victim = first.run_dir / "cells" / "bert__w4g16__code.json"
    kept = first.run_dir / "cells" / "bert__w8a8__text.json"
    kept_before = kept.read_text()
    victim.unlink()
    second = api.run(exp, out=tmp_path / "r", resume=first.run_dir, progress=False, log=lambda s: None)
    assert second.status == "ok" and victim.is_file()
    assert kept.read_text() == kept_before  # finished cells are not measured again
    exp.write_text(exp.read_text().replace("repeats: 3", "repeats: 4"))
    from qbench.errors import ConfigError

    with pytest.raises(ConfigError, match="changed"):
        api.run(exp, out=tmp_path / "r", resume=first.run_dir, progress=False, log=lambda s: None)


def test_lm_rows_decode_generation_and_cached_reference(tiny_run):
    _, outcome = tiny_run
    f = load_results(outcome.run_dir).frame()
    gpt = f[(f.model == "gpt2") & (f.scheme == "w8a8")]
    assert {"kl_median", "kl_p90", "kl_max", "top1_agreement_se", "p_top_change", "gen_prefix_match",
            "gen_exact_match", "decode_ms_per_token", "decode_tok_s", "decode_speedup"} <= set(gpt.metric)
    # the parse check runs on Python workloads only, for both variants
    parse = gpt[gpt.metric == "gen_parse_rate"]
    assert set(parse.workload) == {"code"} and set(parse.variant) == {"baseline", "quantized"}
    dec = gpt[gpt.metric == "decode_ms_per_token"]
    assert set(dec.batch_size.astype(int)) == {1, 4} and (dec.value > 0).all()
    prefix = gpt[gpt.metric == "gen_prefix_match"].value
    assert ((prefix >= 0) & (prefix <= 8)).all()  # generate_tokens: 8
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    refs = meta["models"]["gpt2"]["lm_reference"]
    assert set(refs) == {"builtin:text", "builtin:code"} and all(r["k"] <= r["vocab"] for r in refs.values())


def test_noise_floor_and_reference_reuse_across_runs(tiny_models, tmp_path, monkeypatch):
    """A scheme that quantizes nothing measures the baseline against itself: KL 0, agreement 100%.

    The test has its own reference cache, so the first run computes the reference in this process and the
    second reuses it; a reference left by another test's subprocess would make the floor depend on test order."""
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "cache"))
    schemes = "  - name: nothing\n    weights: {bits: 8}\n    exclude: ['*']\n"
    exp = write_experiment(tmp_path, {"gpt2": tiny_models["gpt2"]}, schemes, name="floor")
    first = api.run(exp, out=tmp_path / "a", progress=False, log=lambda s: None)
    second = api.run(exp, out=tmp_path / "b", progress=False, log=lambda s: None)
    for outcome in (first, second):
        f = load_results(outcome.run_dir).frame()
        value = lambda m: f[f.metric == m].value  # noqa: E731
        # a copy of a model can round differently in the last bit (memory alignment picks the SIMD path),
        # so the floor is zero up to float64 noise; identical logits give exactly 0 (tests/metrics/test_lm.py)
        assert (value("kl_mean").abs() < 1e-10).all() and (value("kl_max").abs() < 1e-9).all()
        assert (value("top1_agreement") == 1).all() and (value("log_ppl_ratio").abs() < 1e-9).all()
        assert (value("gen_exact_match") == 1).all() and (value("p_top_change").abs() < 1e-9).all()
    caches = [json.loads((o.run_dir / "meta.json").read_text())["models"]["gpt2"]["lm_reference"]
              for o in (first, second)]
    assert caches[1]["builtin:text"]["key"] == caches[0]["builtin:text"]["key"]
    assert {r["cache"] for r in caches[0].values()} == {"miss"}
    assert {r["cache"] for r in caches[1].values()} == {"hit"}


def test_every_cell_records_the_machine_it_ran_on(tiny_run):
    """Provenance per cell, not per run: hardware, fingerprint and a host hash (never the host name)."""
    import socket

    _, outcome = tiny_run
    here = api.env()
    for p in (outcome.run_dir / "cells").glob("*.json"):
        c = json.loads(p.read_text())
        assert c["fingerprint"] == api.fingerprint(here)
        assert c["hardware"]["cpu_model"] == here.to_dict()["cpu_model"]
        assert len(c["host"]) == 12 and socket.gethostname() not in json.dumps(c)


def test_the_subprocess_executor_gives_the_same_numbers(tiny_models, tmp_path):
    """Executors differ in where a cell runs, not in what it measures."""
    exp = write_experiment(tmp_path, {"bert": tiny_models["bert"]}, SCHEMES.split("  - name: w4g16")[0], name="ex")
    exp.write_text(exp.read_text().replace("eval_samples: 8}", "eval_samples: 8, threads: 1}"))
    runs = {name: api.run(exp, out=tmp_path / name, progress=False, log=lambda s: None, executor=name)
            for name in ("inprocess", "subprocess")}

    def quality(run_dir):
        cells = [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]
        keep = {"cosine_mean", "cosine_min", "nn_agreement", "weight_bytes"}   # deterministic rows
        return [(c["cell"], c["quant_map"], sorted((r["metric"], r["variant"], r["value"]) for r in c["rows"]
                                                   if r["metric"] in keep)) for c in cells]

    assert runs["inprocess"].status == runs["subprocess"].status == "ok"
    assert quality(runs["inprocess"].run_dir) == quality(runs["subprocess"].run_dir)
    with pytest.raises(Exception, match="unknown executor 'ray2'"):
        api.run(exp, out=tmp_path / "bad", progress=False, log=lambda s: None, executor="ray2")


def test_a_malformed_record_is_written_as_a_failed_cell(tmp_path):
    """The driver validates every record before writing it: one the card could not read becomes a failed
    cell that names the problem and keeps the cell's identity, time and provenance."""
    from qbench.results.records import CellRecord
    from qbench.runner.cell import blank_record
    from qbench.runner.execute import write_cell

    names = {"cell": "m__s__w", "model": "m", "scheme": "s", "workload": "w"}
    record = dict(blank_record(names, "ok"), task="encoder", seconds=1.5, started="2026-01-01T00:00:00+00:00",
                  finished="2026-01-01T00:00:01+00:00", fingerprint="abcd1234", node="n1", surprise=1)
    write_cell(tmp_path, record)
    written = json.loads((tmp_path / "cells" / "m__s__w.json").read_text())
    assert written["status"] == "failed" and "malformed" in written["reason"] and "surprise" in written["reason"]
    assert {k: written[k] for k in (*names, "seconds", "started", "finished", "fingerprint", "node")} == \
        {**names, "seconds": 1.5, "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:01+00:00",
         "fingerprint": "abcd1234", "node": "n1"}
    CellRecord.model_validate(written, context={"strict": True})
