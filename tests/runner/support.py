"""Helpers shared by the runner tests: small experiments on the tiny local models of tests/conftest.py."""
from __future__ import annotations

import textwrap
from pathlib import Path


def write_experiment(tmp_path: Path, models: dict, schemes: str, name: str = "tiny") -> Path:
    model_lines = "\n".join(f"  - {{id: 'hf:{d}', name: {n}}}" for n, d in models.items())
    text = textwrap.dedent("""\
        schema_version: 1
        name: {name}
        models:
        {models}
        device: cpu
        baseline: {{dtype: fp32}}
        schemes:
        {schemes}
        workloads:
          - {{name: text, dataset: "builtin:text"}}
          - {{name: code, dataset: "builtin:code"}}
        measure: {{batch_sizes: [1, 4], seq_len: 32, warmup: 1, repeats: 3, prompt_tokens: 8, generate_tokens: 8,
                  decode_tokens: 4, eval_samples: 8}}
        """).format(name=name, models=model_lines, schemes=textwrap.indent(schemes, ""))
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


# W8A8 on the linears, and the same with the attention matmuls quantized too (run inside the model's own modules)
W8A8_AND_ATTENTION = """\
  - name: w8a8
    weights: {bits: 8}
    activations: {bits: 8, granularity: per_token}
  - name: w8a8-attn
    weights: {bits: 8}
    activations: {bits: 8, granularity: per_token}
    ops: [linear, attention]
"""

SCHEMES = """\
  - name: w8a8
    weights: {bits: 8, granularity: per_channel}
    activations: {bits: 8, granularity: per_token}
  - name: w4g16
    weights: {bits: 4, symmetric: false, granularity: per_group, group_size: 16}
"""


def kill_after_cells(args: list, out: Path, experiment_name: str, env: dict, cells: int = 2) -> Path:
    """Start `qbench run ARGS` (with --no-progress), SIGKILL it once `cells` cells are on disk under `out`, and
    return the run folder. Fails if the run ends before it could be killed."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "qbench.cli", "run", *args, "--out", str(out), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, found = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(f"{experiment_name}/*/cells/*.json"))
        if len(found) >= cells:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return found[0].parent.parent
