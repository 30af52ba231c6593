"""Prefill and decode of a causal LM: the float model and qbench's schemes through the model's own forward
(transformers) and through qbench's decoder forward (measure.lm_forward: qbench), beside llama.cpp, round-robin.

    python benchmarks/decode.py [EXPERIMENT] [--model smollm2-135m] [--schemes w4a8-g64-head,llamacpp-q4_0]
                                [--rounds 8] [--decode-tokens 16] [--apart] [--op-by-op] [--json out.json]

Every round runs every variant once on the same prompt (the experiment's first workload, seq_len tokens, batch 1):
a prefill and `decode-tokens` greedy steps (metrics.lm.prefill_decode, as a run's cells time them). The machine's
load moves all variants alike, so each ratio is taken round by round: printed are the median milliseconds per
variant and, per ratio, the median of the per-round ratios with their 10th and 90th percentiles. Threads: the
experiment's measure.threads for torch and llama.cpp alike.

Before timing, each qbench-forward variant is checked against the model's own forward on the same prompt and the
same greedy tokens: the largest logit difference, the mean KL(own || qbench) over the prefill's last position and
the decode steps, and whether every step's top token agrees. After timing, one decode step of each
qbench-forward variant at the prompt's length is profiled by kind (DecoderGraph(profile=True): linears, attention,
norms, activation, embedding, and the rest: Python and PyTorch glue), the median over 10 steps, with the speed-up
the variant could reach with its linears free.

With --apart, every qbench-forward variant also runs with its sibling projections one call each (DecoderGraph
join=False, on a copy of the model made before the join); with --op-by-op, also with its decode steps called op by
op instead of as the static step (DecoderGraph static_step=False); the ratios to each are printed.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

RATIOS = "fp32 (own forward) / variant, fp32 (qbench forward) / variant, llama.cpp / variant"


def _agree(own, graph, ids, steps: int) -> dict:
    """The qbench forward's logits against the model's own: prefill, then `steps` greedy tokens (the own
    forward's) fed to both."""
    import torch
    import torch.nn.functional as F

    from qbench.metrics.lm import ModelRun

    ref, got = ModelRun(own), graph
    a, b = ref.prefill(ids), got.prefill(ids)
    diffs, kls, same = [], [], 0
    for i in range(steps + 1):
        diffs.append((a - b).abs().max().item())
        kls.append(F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True,
                            reduction="batchmean").item())
        same += int(torch.equal(a.argmax(-1), b.argmax(-1)))
        if i < steps:
            nxt = a.argmax(-1)
            a, b = ref.step(nxt), got.step(nxt)
    return {"max_abs": max(diffs), "kl_mean": statistics.mean(kls), "top1_same": same, "steps": steps + 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", nargs="?", default="experiments/speed.yaml")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="w4a8-g64-head,w8a8-head,llamacpp-q4_0")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--apart", action="store_true", help="also time each qbench-forward variant with q/k/v and "
                    "gate/up one call each (join=False)")
    ap.add_argument("--op-by-op", action="store_true", help="also time each qbench-forward variant with its decode "
                    "steps called op by op (static_step=False)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from qbench.datasets import load_suite
    from qbench.engine.api import quantize_
    from qbench.engine.graph import DecoderGraph
    from qbench.hardware import detect
    from qbench.metrics.lm import prefill_decode
    from qbench.models import load_model
    from qbench.runner.cellstate import setup_torch
    from qbench.runner.measure import tokenize
    from qbench.runner.profile import ratio_spread
    from qbench.runtimes import RUNTIMES
    from qbench.schema import load_experiment

    exp = load_experiment(args.experiment)
    m = exp.measure
    setup_torch(m)
    ref = next(r for r in exp.models if r.display == args.model)
    loaded = load_model(ref, "fp32", "cpu")
    suite = load_suite(exp.workloads[0].dataset, calibration_size=0, evaluation_size=1, seed=m.seed)
    ids = tokenize(loaded.tokenizer, [s.text for s in suite.evaluation], m.seq_len, "cpu")["input_ids"][:1]
    tokens = ids.shape[1] + args.decode_tokens
    def qbench_forward(name: str, model) -> None:
        if args.apart:                                   # a copy made before the join: its own separate weights
            variants[f"{name} (qbench apart)"] = DecoderGraph(copy.deepcopy(model), 1, tokens, join=False)
        variants[f"{name} (qbench)"] = DecoderGraph(model, 1, tokens)
        if args.op_by_op:
            variants[f"{name} (qbench op by op)"] = DecoderGraph(model, 1, tokens, static_step=False)

    variants = {"fp32 (own)": loaded.model}
    qbench_forward("fp32", loaded.model)
    float_ops = variants["fp32 (qbench)"].float_ops
    for s in exp.schemes:
        if s.name not in args.schemes.split(","):
            continue
        if s.runtime is not None:
            rt = RUNTIMES.get(s.runtime.name)
            if rt.problem():
                print(f"skipping {s.name}: {rt.problem()}")
                continue
            variants[s.name] = rt.build(loaded, s.runtime, torch.get_num_threads())
            continue
        quant = copy.deepcopy(loaded.model)
        quantize_(quant, s, device="cpu")
        variants[f"{s.name} (own)"] = quant
        qbench_forward(s.name, quant)
    agreement = {}
    for name, v in variants.items():
        if name.endswith("(qbench)"):
            agreement[name] = _agree(variants[name.replace("(qbench)", "(own)")], v, ids, args.decode_tokens)
    times: dict[str, dict[str, list[float]]] = {v: {"prefill": [], "decode": []} for v in variants}
    for r in range(args.rounds + 1):                    # round 0 warms up
        for name, v in variants.items():
            p, d = prefill_decode(v, ids, args.decode_tokens, sync=lambda: None)
            if r:
                times[name]["prefill"].append(p)
                times[name]["decode"].append(d / args.decode_tokens)
    hw = detect()
    print(f"{args.model}, batch 1, {ids.shape[1]}-token prompt, {args.decode_tokens} decode steps, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds; {hw.cpu_model}; qbench forward's float work: "
          f"{float_ops}")
    for name, v in variants.items():
        if name.endswith("(qbench)"):
            print(f"{name}: sibling projections as one call: {v.joins}")
    for name, a in agreement.items():
        print(f"{name}: against the model's own forward, max |logit difference| {a['max_abs']:.3g}, mean KL "
              f"{a['kl_mean']:.3g}, top token the same at {a['top1_same']} of {a['steps']} positions")
    refs = [("fp32 (own)", "vs fp32 own"), ("fp32 (qbench)", "vs fp32 qbench"),
            (next((v for v in variants if v.startswith("llamacpp")), None), "vs llama.cpp")]
    out = {"model": args.model, "threads": torch.get_num_threads(), "rounds": args.rounds,
           "prompt_tokens": ids.shape[1], "decode_tokens": args.decode_tokens, "cpu": hw.cpu_model,
           "float_ops": float_ops, "agreement": agreement, "times": times, "ratios": {}}
    for phase in ("prefill", "decode"):
        print(f"\n{phase} (ms{' per token' if phase == 'decode' else ''}; ratio = reference ms / variant ms, "
              "median of the per-round ratios [p10, p90])")
        print(f"{'variant':28s} {'ms':>8s}  " + "  ".join(f"{label:>24s}" for ref_name, label in refs if ref_name))
        for name in variants:
            ms = times[name][phase]
            cols = []
            for ref_name, label in refs:
                if not ref_name:
                    continue
                ratio = ratio_spread(times[ref_name][phase], ms)
                out["ratios"].setdefault(phase, {}).setdefault(name, {})[label] = ratio
                cols.append(f"{ratio[0]:6.2f}x [{ratio[1]:.2f}, {ratio[2]:.2f}]")
            print(f"{name:28s} {statistics.median(ms):8.2f}  " + "  ".join(f"{c:>24s}" for c in cols))
    for suffix, what in ((" apart)", "sibling projections joined: apart ms / joined ms"),
                         (" op by op)", "the static decode step: op-by-op ms / static ms")):
        if not any(name.endswith(suffix) for name in variants):
            continue
        print(f"\n{what}, median of the per-round ratios [p10, p90]")
        for name in variants:
            if name.endswith(suffix):
                mine = name.replace(suffix, ")")
                cols = []
                for phase in ("prefill", "decode"):
                    ratio = ratio_spread(times[name][phase], times[mine][phase])
                    out["ratios"].setdefault(phase, {}).setdefault(mine, {})[f"vs{suffix[:-1]}"] = ratio
                    cols.append(f"{phase} {ratio[0]:.3f}x [{ratio[1]:.3f}, {ratio[2]:.3f}]")
                print(f"{mine:28s} " + "  ".join(cols))
    print("\ndecode step by kind, qbench forward (median of 10 profiled steps; ms and share of the step)")
    out["profile"] = {}
    for name, v in variants.items():
        if not name.endswith("(qbench)"):
            continue
        g = DecoderGraph(v.model, 1, tokens, profile=True)
        g.prefill(ids)
        tok = torch.zeros(1, dtype=torch.long)
        steps = [g.profile_step(tok, ids.shape[1]) for _ in range(11)][1:]
        med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
        out["profile"][name] = med
        shares = "  ".join(f"{k} {1e3 * med[k]:.2f} ({100 * med[k] / med['total']:.0f}%)"
                           for k in (*DecoderGraph.KINDS, "other"))
        print(f"{name:28s} total {1e3 * med['total']:.2f}: {shares}; linears free: "
              f"{med['total'] / (med['total'] - med['linear']):.2f}x this variant")
    for v in variants.values():
        if hasattr(v, "close"):
            v.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
