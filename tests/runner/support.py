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


SCHEMES = """\
  - name: w8a8
    weights: {bits: 8, granularity: per_channel}
    activations: {bits: 8, granularity: per_token}
  - name: w4g16
    weights: {bits: 4, symmetric: false, granularity: per_group, group_size: 16}
"""
