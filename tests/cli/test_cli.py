"""The `qbench` command, run as a real subprocess: exit codes 0 ok / 1 run failure / 2 invalid input,
and every user error is ONE line on stderr starting with "qbench: error:" (never a traceback)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT = REPO_ROOT / "experiments" / "int8_vs_fp16.yaml"
BAD_DIR = REPO_ROOT / "tests" / "fixtures" / "bad_experiments"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))

_SCRIPT = Path(sys.executable).with_name("qbench")
QBENCH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "qbench.cli"]
ENV = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
ENV.pop("FORCE_COLOR", None)


def qbench(*args, cwd=REPO_ROOT, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*QBENCH, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    both = out.stdout + out.stderr
    assert out.returncode == code, both
    assert "Traceback" not in both, both
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("qbench: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_experiment(path: Path, **changes) -> Path:
    data = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    for key, value in changes.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def small_experiment(tmp_path: Path, name: str = "small.yaml", **changes) -> Path:
    """The default experiment on a small local corpus: preflight reads it in milliseconds."""
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jackals".split()
        with corpus.open("w", encoding="utf-8") as fh:
            for i in range(300):
                text = " ".join(words[(i * 7 + j * 3) % len(words)] + str((i * j) % 97) for j in range(120))
                fh.write(json.dumps({"text": f"Record {i}: {text}."}) + "\n")
    changes.setdefault("workloads", [{"name": "text", "dataset": str(corpus)}])
    return write_experiment(tmp_path / name, **changes)


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# help and import cost


def test_help():
    out = qbench("--help")
    assert out.returncode == 0, out.stderr
    for command in ("run", "validate", "card", "env", "schema", "list"):
        assert command in out.stdout


def test_no_arguments_shows_help_without_traceback():
    out = qbench()
    assert "Usage" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_import_qbench_does_not_import_torch():
    out = python("""
        import sys
        import qbench, qbench.cli, qbench.errors, qbench.registry
        assert qbench.__version__
        heavy = [m for m in ("torch", "transformers", "pandas", "matplotlib") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# (`run --dry-run` is not among them: it builds every model's layers on torch's meta device to check shapes)
@pytest.mark.parametrize("argv", [["validate", str(DEFAULT)], ["schema"]], ids=["validate", "schema"])
def test_light_commands_do_not_import_torch(argv, tmp_path):
    argv = [str(small_experiment(tmp_path)) if a == "SMALL" else a for a in argv]
    out = python(f"""
        import sys
        from qbench.cli import app
        sys.argv = ["qbench", *{argv!r}]
        try:
            app()
        except SystemExit as e:
            assert not e.code, e.code
        assert "torch" not in sys.modules
        print("no torch")
    """)
    assert out.returncode == 0 and out.stdout.strip().endswith("no torch"), out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_default_experiment():
    out = qbench("validate", "experiments/int8_vs_fp16.yaml")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "experiments/int8_vs_fp16.yaml: ok (2 models x 3 schemes x 2 workloads)"
    assert out.stderr == ""


def test_validate_several_files():
    out = qbench("validate", DEFAULT, DEFAULT)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2


def test_there_are_bad_fixtures():
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_validate_bad_file(path):
    line = assert_one_line_error(qbench("validate", path), path.name)
    assert line.startswith(f"qbench: error: {path}")  # the file as given on the command line


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_run_bad_file(path, tmp_path):
    assert_one_line_error(qbench("run", path, "--out", tmp_path / "reports"), path.name)
    assert not (tmp_path / "reports").exists()


def test_bad_file_after_good_file_fails_validation():
    bad = BAD_DIR / "device_tpu.yaml"
    assert_one_line_error(qbench("validate", DEFAULT, bad), bad.name)


def test_validate_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(qbench("validate", missing), str(missing), "no such experiment file")


def test_python_tag_is_not_executed(tmp_path):
    out = qbench("validate", BAD_DIR / "python_tag.yaml")
    assert_one_line_error(out, "python_tag.yaml", "tag not allowed")
    assert out.stdout == ""  # nothing ran, nothing echoed "hi"
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'schema_version: 1\nname: x\ndescription: !!python/object/apply:os.system ["touch {marker}"]\n',
                    encoding="utf-8")
    for command in ("validate", "run"):
        assert_one_line_error(qbench(command, evil, cwd=tmp_path), "evil.yaml")
    assert not marker.exists()


def test_error_with_a_newline_in_a_value_stays_one_line(tmp_path):
    exp = write_experiment(tmp_path / "nl.yaml", device="tp\nu", description="x")
    assert_one_line_error(qbench("validate", exp), "nl.yaml", "device")


def test_huge_file_is_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("#" * 1_100_000 + "\n", encoding="utf-8")
    assert_one_line_error(qbench("validate", big), "big.yaml", "limited to")


# ---------------------------------------------------------------------------------------------
# run: bad inputs fail before any work


def test_run_missing_model_directory_fails_fast(tmp_path):
    exp = write_experiment(tmp_path / "nomodel.yaml", models=[{"id": "hf:./does/not/exist"}])
    started = time.monotonic()
    out = qbench("run", exp, "--out", tmp_path / "reports")
    assert time.monotonic() - started < 20
    assert_one_line_error(out, "./does/not/exist", "models[0].id")
    assert not (tmp_path / "reports").exists()


def test_run_missing_dataset_file_fails_fast(tmp_path):
    small = small_experiment(tmp_path)
    corpus = yaml.safe_load(small.read_text(encoding="utf-8"))["workloads"][0]["dataset"]
    exp = write_experiment(tmp_path / "nodata.yaml",
                           workloads=[{"name": "text", "dataset": corpus},
                                      {"name": "mine", "dataset": "./no/such/corpus.jsonl"}])
    started = time.monotonic()
    out = qbench("run", exp, "--out", tmp_path / "reports")
    assert time.monotonic() - started < 20
    assert_one_line_error(out, "./no/such/corpus.jsonl", "workloads[1].dataset")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("change, fragments", [
    ({"models": [{"id": "hf:./does/not/exist"}]}, ("./does/not/exist",)),
    ({"models": [{"id": "minilmm"}]}, ("unknown model id", "did you mean 'minilm'")),
    ({"workloads": [{"name": "text", "dataset": "builtin:txt"}]}, ("builtin:txt",)),
], ids=["model-dir", "model-id", "builtin-dataset"])
def test_dry_run_checks_inputs_too(change, fragments, tmp_path):
    exp = write_experiment(tmp_path / "bad.yaml", **change)
    assert_one_line_error(qbench("run", exp, "--dry-run"), *fragments)


def test_dry_run_default_experiment(tmp_path):
    out = qbench("run", "experiments/int8_vs_fp16.yaml", "--dry-run", "--out", tmp_path / "reports")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "reports").exists()  # measures and writes nothing
    assert "Traceback" not in out.stdout + out.stderr
    # the same plan the library makes on this machine, cell by cell
    from qbench.api import plan as make_plan_for
    from qbench.hardware import detect, has_fast_fp16

    plan = make_plan_for(DEFAULT)
    lines = out.stdout.splitlines()
    assert lines == plan.describe()
    assert len(plan.cells) == 12
    for cell in plan.cells:
        assert f"  run  {cell.id}" in lines
    assert lines[0].startswith(f"experiment int8_vs_fp16: 12 cells on {plan.device}, baseline ")
    if plan.device == "cpu" and not has_fast_fp16(detect(include_torch=False), "cpu")[0]:
        assert "baseline fp32 (requested fp16, ran fp32: " in lines[0]


def test_dry_run_on_cpu_prints_the_fp32_note(tmp_path):
    """On a CPU without AVX512-FP16/AMX the fp16 baseline is replaced by fp32, and the plan says so."""
    from qbench.hardware import detect, has_fast_fp16

    if has_fast_fp16(detect(include_torch=False), "cpu")[0]:
        pytest.skip("this CPU has fast fp16")
    exp = small_experiment(tmp_path, device="cpu")
    out = qbench("run", exp, "--dry-run")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert "6 cells on cpu, baseline fp32 (requested fp16, ran fp32: CPU lacks AVX512-FP16/AMX" in first


def test_dry_run_cuda_without_gpu(tmp_path):
    from qbench.hardware import detect

    if detect(include_torch=False).gpus:
        pytest.skip("this machine has a GPU")
    exp = small_experiment(tmp_path, device="cuda")
    assert_one_line_error(qbench("run", exp, "--dry-run"), "device", "0 CUDA GPU")


def test_run_needs_an_experiment_or_a_run_to_resume(tmp_path):
    assert_one_line_error(qbench("run"), "give an experiment file, or --resume RUN_DIR")
    run_dir = tmp_path / "not_a_run"
    run_dir.mkdir()
    assert_one_line_error(qbench("run", "--resume", run_dir), "no meta.json")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    run_dir = tmp_path / "not_a_run"
    run_dir.mkdir()
    assert_one_line_error(qbench("run", small_experiment(tmp_path), "--resume", run_dir,
                                 "--out", tmp_path / "reports"), "no meta.json")


# ---------------------------------------------------------------------------------------------
# schema, list, env, card


def test_schema_prints_json():
    out = qbench("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    from qbench.schema import json_schema

    assert schema == json.loads(json_schema())
    assert "schemes" in schema["properties"]


def test_schema_of_run_records_validates_the_fixture_run():
    """`qbench schema --cell / --meta`: the JSON Schemas of what a run writes, checked by an independent
    validator (jsonschema) against a run folder the real runner wrote, and against a broken copy."""
    import jsonschema

    run = REPO_ROOT / "tests" / "fixtures" / "run_small"
    for flag, files in (("--cell", sorted((run / "cells").glob("*.json"))), ("--meta", [run / "meta.json"])):
        out = qbench("schema", flag)
        assert out.returncode == 0, out.stderr
        schema = json.loads(out.stdout)
        for path in files:
            data = json.loads(path.read_text())
            jsonschema.validate(data, schema)
            broken = dict(data, status="maybe")
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(broken, schema)
    assert_one_line_error(qbench("schema", "--cell", "--meta"), "choose one of")


def test_list_kernels():
    out = qbench("list", "kernels")
    assert out.returncode == 0, out.stderr
    names = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert {"int8_int_mm", "int8_weight_only", "int4_packed", "reference", "w4a8_native"} <= names
    assert {"int8_attention_native", "int8_attention", "attention_qdq", "residual_qdq"} <= names   # ops, apart
    widths = {len(line) - len(line[len(line.split()[0]):].lstrip()) for line in out.stdout.splitlines()
              if len(line.split()) > 2 and line.split()[1] in ("integer", "emulated", "float", "fp32", "fp8")}
    assert len(widths) == 1, widths                                    # one column for every kernel name


def test_list_defaults_to_kernels():
    out = qbench("list")
    assert out.returncode == 0 and "int8_int_mm" in out.stdout


@pytest.mark.parametrize("what, expected", [("models", "minilm"), ("datasets", "builtin:text")])
def test_list_models_and_datasets(what, expected):
    out = qbench("list", what)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


def test_list_bogus():
    assert_one_line_error(qbench("list", "bogus"), "cannot list 'bogus'")
    assert_one_line_error(qbench("list", "kernel"), "did you mean 'kernels'")


def test_env_json():
    out = qbench("env", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert re.fullmatch(r"[0-9a-f]{8}", info["fingerprint"]), info["fingerprint"]
    for key in ("cpu_model", "cpu_arch", "cpu_flags", "logical_cores", "ram_bytes", "python", "packages", "gpus"):
        assert key in info
    from qbench.hardware.detect import HardwareInfo

    assert HardwareInfo.from_dict(info).cpu_model == info["cpu_model"]


def test_env_text():
    out = qbench("env")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^fingerprint: [0-9a-f]{8}$", out.stdout, re.M)


def test_card_of_nonexistent_folder():
    assert_one_line_error(qbench("card", "/nonexistent"), "/nonexistent")


def test_card_of_folder_without_meta(tmp_path):
    assert_one_line_error(qbench("card", tmp_path), str(tmp_path), "meta.json")


def test_unknown_command_is_a_usage_error():
    out = qbench("frobnicate")
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr


def test_module_and_console_script_agree():
    if not _SCRIPT.is_file():
        pytest.skip("console script not installed next to this interpreter")
    via_module = subprocess.run([sys.executable, "-m", "qbench.cli", "validate", str(DEFAULT)], cwd=REPO_ROOT,
                                env=ENV, capture_output=True, text=True, timeout=60)
    assert via_module.returncode == 0
    assert via_module.stdout == qbench("validate", DEFAULT).stdout


def test_card_rerenders_and_exports_hf_snippet(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "run_small", run)
    ambiguous = qbench("card", run, "--hf")
    assert ambiguous.returncode == 2 and "choose one of" in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1
    experiment = json.loads((run / "meta.json").read_text())["experiment"]
    model = ambiguous.stderr.split("choose one of: ")[1].split(",")[0].strip()   # the first model it offers
    ok = qbench("card", run, "--hf", "--model", model, "--scheme", experiment["schemes"][0]["name"])
    assert ok.returncode == 0, ok.stderr
    snippet = next(run.glob("hf-*.md")).read_text()
    front = yaml.safe_load(snippet.split("---")[1])
    assert front["base_model_relation"] == "quantized"
    assert (run / "card.md").is_file() and (run / "card.html").is_file()
