"""`qbench run --dry-run` makes every check the real run makes before measuring: what the run rejects, the
dry run rejects, with the same exit code 2 and the same located message, and nothing is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qbench import api
from qbench.errors import ConfigError
from tests.runner.support import SCHEMES, write_experiment

_SCRIPT = Path(sys.executable).with_name("qbench")
QBENCH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "qbench.cli"]


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory) -> Path:
    """A BERT whose FFN output layer has K = 32776 input columns: more than int8_native's int32 sums hold."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import _tokenizer

    torch.manual_seed(0)
    tok, vocab = _tokenizer(64)
    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32776, vocab_size=vocab, max_position_embeddings=64))
    d = tmp_path_factory.mktemp("wide_bert")
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def _rejections(tiny_models, wide_bert, tmp_path):
    """(experiment, fragments its rejection must name) for each kind of impossible configuration."""
    gpt2 = {"gpt2": tiny_models["gpt2"]}
    grouped = write_experiment(tmp_path, gpt2, SCHEMES.replace("group_size: 16", "group_size: 24"), name="g")
    long = write_experiment(tmp_path, gpt2, SCHEMES, name="long")
    long.write_text(long.read_text().replace("seq_len: 32", "seq_len: 100"))
    forced = write_experiment(tmp_path, {"wide": wide_bert}, """\
  - name: w8a8-native
    weights: {bits: 8, granularity: per_channel}
    activations: {bits: 8, granularity: per_token}
    kernel: int8_native
""", name="forced")
    override = write_experiment(tmp_path, gpt2, SCHEMES + """\
    overrides:
      - {match: "*.attn.*", weights: {bits: 4, granularity: per_group, group_size: 24}}
""", name="ov")
    return {
        "group-size": (grouped, ("schemes[1].weights.group_size", "24 does not divide the 64")),
        "override-group-size": (override, ("schemes[1].overrides[0].weights.group_size", "24 does not divide the 64")),
        "seq-len": (long, ("measure.seq_len", "context of gpt2 (64)")),
        # on a CPU with AVX-512 VNNI the kernel runs but cannot hold the K = 32776 layer; without it the forced
        # kernel cannot run at all: either way the run must refuse before measuring, at schemes[0].kernel
        "forced-kernel": (forced, ("schemes[0].kernel", "int8_native")),
    }


@pytest.mark.parametrize("case", ["group-size", "override-group-size", "seq-len", "forced-kernel"])
def test_dry_run_rejects_what_the_run_rejects(case, tiny_models, wide_bert, tmp_path):
    exp, fragments = _rejections(tiny_models, wide_bert, tmp_path)[case]
    out = tmp_path / "reports"
    dry = subprocess.run([*QBENCH, "run", str(exp), "--dry-run", "--out", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "Traceback" not in dry.stderr
    error = [line for line in dry.stderr.splitlines() if line.startswith("qbench: error: ")]
    assert len(error) == 1, dry.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]
    assert dry.stdout == ""                      # no plan printed for an experiment that cannot run
    with pytest.raises(ConfigError) as real:     # the real run: the same message, before any output
        api.run(exp, out=out, progress=False, log=lambda s: None)
    assert error[0] == f"qbench: error: {real.value}"
    assert not out.exists()


def test_forced_kernel_names_the_layer_it_cannot_hold(tiny_models, wide_bert, tmp_path):
    from qbench.engine.kernels import KERNELS

    exp, _ = _rejections(tiny_models, wide_bert, tmp_path)["forced-kernel"]
    from qbench.engine.api import activation_spec, weight_spec
    from qbench.schema import load_experiment

    scheme = load_experiment(exp).schemes[0]
    if KERNELS.get("int8_native").supports(weight_spec(scheme), activation_spec(scheme), "cpu"):
        pytest.skip("int8_native cannot run on this CPU (needs AVX-512 VNNI and the native library)")
    with pytest.raises(ConfigError) as err:
        api.dry_run(exp, log=lambda s: None)
    assert "K = 32776" in str(err.value) and "schemes[0].kernel" in str(err.value)
