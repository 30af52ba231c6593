"""make_plan: cells, device and baseline resolution against a constructed HardwareInfo. No torch."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from qbench.errors import ConfigError
from qbench.hardware import detect
from qbench.hardware.detect import GpuInfo, HardwareInfo
from qbench.runner.plan import make_plan, resolve_baseline, resolve_device
from qbench.schema import load_experiment, parse_experiment

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT = REPO_ROOT / "experiments" / "int8_vs_fp16.yaml"

_REAL = detect(include_torch=False)
AMPERE = GpuInfo(index=0, name="Fake A100", memory_bytes=80 << 30, compute_capability="8.0")
TURING = GpuInfo(index=0, name="Fake T4", memory_bytes=16 << 30, compute_capability="7.5")


def hw(flags=("avx2", "fma"), gpus=()) -> HardwareInfo:
    return dataclasses.replace(_REAL, cpu_flags=tuple(flags), gpus=tuple(gpus))


def experiment(**changes):
    data = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    data.update(changes)
    return parse_experiment(yaml.safe_dump(data), source="test.yaml")


def test_cpu_without_fast_fp16_runs_fp32_and_says_so():
    plan = make_plan(experiment(device="cpu"), hw(flags=("avx2", "fma", "avx512f", "avx512_vnni")))
    assert plan.device == "cpu"
    assert plan.baseline_dtype == "fp32"
    assert "fp16" in plan.baseline_note and "fp32" in plan.baseline_note
    assert "baseline fp32" in plan.describe()[0] and plan.baseline_note in plan.describe()[0]


@pytest.mark.parametrize("flag", ["amx_tile", "avx512_fp16"])
def test_cpu_with_fast_fp16_keeps_fp16(flag):
    plan = make_plan(experiment(device="cpu"), hw(flags=("avx2", flag)))
    assert plan.baseline_dtype == "fp16"
    assert plan.baseline_note == ""


@pytest.mark.parametrize("flags, expected", [(("avx2",), "fp32"), (("avx512_bf16",), "bf16"),
                                             (("amx_bf16",), "bf16")])
def test_bf16_baseline_on_cpu(flags, expected):
    plan = make_plan(experiment(device="cpu", baseline={"dtype": "bf16"}), hw(flags=flags))
    assert plan.baseline_dtype == expected
    assert (plan.baseline_note == "") == (expected == "bf16")
    if expected == "fp32":
        assert "bf16" in plan.baseline_note


def test_fp32_and_auto_baselines():
    assert make_plan(experiment(device="cpu", baseline={"dtype": "fp32"}), hw()).baseline_dtype == "fp32"
    assert make_plan(experiment(device="cpu", baseline={"dtype": "fp32"}), hw()).baseline_note == ""
    auto_cpu = make_plan(experiment(baseline={"dtype": "auto"}), hw())
    assert (auto_cpu.device, auto_cpu.baseline_dtype) == ("cpu", "fp32")
    auto_gpu = make_plan(experiment(baseline={"dtype": "auto"}), hw(gpus=[AMPERE]))
    assert (auto_gpu.device, auto_gpu.baseline_dtype) == ("cuda:0", "fp16")


def test_bf16_on_gpus_depends_on_compute_capability():
    assert resolve_baseline("bf16", "cuda:0", hw(gpus=[AMPERE])) == ("bf16", "")
    dtype, note = resolve_baseline("bf16", "cuda:0", hw(gpus=[TURING]))
    assert dtype == "fp32" and "7.5" in note
    assert resolve_baseline("fp16", "cuda:0", hw(gpus=[TURING])) == ("fp16", "")


def test_device_auto_without_gpus_is_cpu():
    plan = make_plan(experiment(device="auto"), hw(gpus=()))
    assert plan.device == "cpu"


def test_device_auto_with_a_gpu_is_cuda0():
    plan = make_plan(experiment(device="auto"), hw(gpus=[AMPERE]))
    assert plan.device == "cuda:0"
    assert plan.baseline_dtype == "fp16"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_config_error(device):
    with pytest.raises(ConfigError) as info:
        make_plan(experiment(device=device), hw(gpus=()))
    assert info.value.where == "device"
    assert device in str(info.value) and "0 CUDA GPU" in str(info.value)
    assert info.value.exit_code == 2


def test_cuda_index_beyond_the_gpus_is_a_config_error():
    assert resolve_device("cuda:0", hw(gpus=[AMPERE])) == "cuda:0"
    assert resolve_device("cuda", hw(gpus=[AMPERE])) == "cuda:0"
    with pytest.raises(ConfigError):
        resolve_device("cuda:1", hw(gpus=[AMPERE]))


def test_explicit_cpu_ignores_gpus():
    assert make_plan(experiment(device="cpu"), hw(gpus=[AMPERE])).device == "cpu"


def test_cells_are_models_x_schemes_x_workloads_in_order():
    exp = experiment(device="cpu", models=[{"id": "minilm"}, {"id": "hf:gpt2", "name": "gpt2"}],
                     workloads=[{"name": "text", "dataset": "builtin:text"},
                                {"name": "code", "dataset": "builtin:code"},
                                {"name": "prose", "dataset": "data/prose.txt"}])
    plan = make_plan(exp, hw())
    assert len(plan.cells) == 2 * 3 * 3 == len(exp.models) * len(exp.schemes) * len(exp.workloads)
    ids = [c.id for c in plan.cells]
    assert len(set(ids)) == len(ids)
    expected = [(m.display, s.name, w.name) for m in exp.models for s in exp.schemes for w in exp.workloads]
    assert [(c.model.display, c.scheme.name, c.workload.name) for c in plan.cells] == expected
    assert ids[0] == "minilm__w8a8-per-channel__text"
    assert all(line.startswith("  run  ") for line in plan.describe()[2:])
    assert [line.split()[-1] for line in plan.describe()[2:]] == ids


def test_default_experiment_plan():
    plan = make_plan(load_experiment(DEFAULT), hw(gpus=()))
    assert plan.device == "cpu" and plan.baseline_dtype == "fp32"
    schemes = ["w8a8-per-channel", "w8-per-channel", "w4-per-group"]
    assert [c.id for c in plan.cells] == [f"{m}__{s}__{w}" for m in ("minilm", "smollm2-135m") for s in schemes
                                          for w in ("text", "code")]
    assert plan.skipped == ()


def test_cell_ids_are_slugs():
    exp = experiment(device="cpu", models=[{"id": "hf:org/some model", "name": "My Model/v2"}])
    ids = [c.id for c in make_plan(exp, hw()).cells]
    assert all(i.startswith("My-Model-v2__") for i in ids)
    assert all("/" not in i and " " not in i for i in ids)


def test_names_colliding_after_slugging_are_a_config_error():
    exp = experiment(device="cpu", models=[{"id": "minilm", "name": "a b"}, {"id": "minilm", "name": "a/b"}])
    with pytest.raises(ConfigError, match="collide"):
        make_plan(exp, hw())


def test_cpu_only_kernels_are_skipped_on_gpu_with_a_reason():
    data = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    data["schemes"][0]["kernel"] = "int8_int_mm"
    data["schemes"].append({"name": "torch-ao-dynamic", "kernel": "torch_ao_dynamic",
                            "weights": {"bits": 8, "granularity": "per_tensor"},
                            "activations": {"bits": 7, "signed": False, "symmetric": False,
                                            "granularity": "per_tensor", "dynamic": True}})
    exp = parse_experiment(yaml.safe_dump(data))
    gpu_plan = make_plan(exp, hw(gpus=[AMPERE]))
    assert len(gpu_plan.cells) == 8 and len(gpu_plan.skipped) == 8        # int8_int_mm and torch_ao_dynamic
    assert all("CPU only" in why for _, why in gpu_plan.skipped)
    assert any(line.startswith("  skip ") for line in gpu_plan.describe())
    cpu_plan = make_plan(exp, hw())
    assert len(cpu_plan.cells) == 16 and cpu_plan.skipped == ()


def test_planning_does_not_import_torch():
    code = textwrap.dedent(f"""
        import sys
        import qbench.runner.plan, qbench.schema, qbench.api
        from qbench.hardware import detect
        from qbench.runner.plan import make_plan
        from qbench.schema import load_experiment
        plan = make_plan(load_experiment({str(DEFAULT)!r}), detect(include_torch=False))
        assert plan.cells
        assert qbench.api.plan({str(DEFAULT)!r}).cells
        qbench.api.validate([{str(DEFAULT)!r}])
        qbench.schema.json_schema()
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def _with_llamacpp(**changes):
    data = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    data["schemes"] = [*data["schemes"], {"name": "llamacpp-q4_0", "runtime": {"name": "llama.cpp", "type": "Q4_0"}}]
    data.update(changes)
    return parse_experiment(yaml.safe_dump(data), source="test.yaml")


def test_a_runtime_scheme_runs_on_gguf_models_and_is_skipped_elsewhere_with_its_reason():
    plan = make_plan(_with_llamacpp(device="cpu"), hw())
    runs = {c.model.id for c in plan.cells if c.scheme.runtime is not None}
    skipped = {c.model.id: why for c, why in plan.skipped}
    assert runs == {"smollm2-135m"}
    assert skipped.keys() == {"minilm"} and "GGUF" in skipped["minilm"] and "minilm is not one" in skipped["minilm"]


def test_a_runtime_scheme_beside_a_gpu_baseline_is_skipped():
    plan = make_plan(_with_llamacpp(device="cuda"), hw(gpus=(AMPERE,)))
    reasons = {why for c, why in plan.skipped if c.scheme.runtime is not None}
    assert len(reasons) == 1 and "runs on CPU here" in next(iter(reasons))
    assert all(c.scheme.runtime is None for c in plan.cells)


def test_a_scheme_without_a_runtime_dumps_as_before():
    exp = _with_llamacpp()
    dumped = exp.model_dump(mode="json")["schemes"]
    assert all("runtime" not in s for s in dumped[:-1])
    assert dumped[-1] == {"name": "llamacpp-q4_0", "runtime": {"name": "llama.cpp", "type": "Q4_0", "kv_cache": "f16"}}
