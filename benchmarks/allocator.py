"""What measure.memory_reuse changes: one model's baseline and scheme timed with and without it, side by side.

    python benchmarks/allocator.py [EXPERIMENT] [--model minilm] [--scheme w8a8] [--batch 8] [--pairs 4]
                                   [--rounds 10] [--json out.json]

The setting holds for a whole process (glibc cannot undo it), so each side runs in fresh processes, alternated
(on, off, on, off, ...: the machine's load moves both), each running `qbench bench model`'s measurement
(runner.profile.bench_model) on the model and scheme: the prefill forward of the baseline and the scheme timed
round-robin (`rounds` times after 2 warm-up rounds), with the minor page faults of each forward (it profiles, and
for causal LMs times a decode step, too; only the plain prefill rounds are read). Printed per setting: the median
baseline and scheme milliseconds, the median of the per-round speed-ups with their 10th-90th percentiles over every
round of its processes, and the page faults per forward.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys
from qbench.hardware.allocator import describe
from qbench.runner.profile import bench_model
from qbench.schema import load_experiment

exp_path, model_name, scheme_name, batch, rounds, setting = sys.argv[1:7]
exp = load_experiment(exp_path)
exp = exp.model_copy(update={"measure": exp.measure.model_copy(update={"memory_reuse": setting == "on"})})
ref = next(r for r in exp.models if r.display == model_name)
rep = bench_model(exp, ref, schemes=[scheme_name], batch_size=int(batch), repeats=int(rounds), warmup=2,
                  log=lambda s: None, progress=False)
raw = rep["raw"]["prefill"]
print(json.dumps({"ms": {"baseline": [1e3 * s for s in raw["baseline"]["plain"]],
                         "scheme": [1e3 * s for s in raw[scheme_name]["plain"]]},
                  "faults": {"baseline": raw["baseline"]["faults"], "scheme": raw[scheme_name]["faults"]},
                  "allocator": describe(), "threads": rep["threads"]}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/allocator.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", nargs="?", default="experiments/speed.yaml")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--scheme", default="w8a8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=4, help="processes per setting, alternated")
    ap.add_argument("--rounds", type=int, default=10, help="timed round-robin rounds per process")
    ap.add_argument("--json", help="write every process's raw timings here")
    args = ap.parse_args(argv)
    runs = {"on": [], "off": []}
    for i in range(args.pairs):
        for setting in ("on", "off"):
            out = subprocess.run([sys.executable, "-c", CHILD, args.experiment, args.model, args.scheme,
                                  str(args.batch), str(args.rounds), setting], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"process {i + 1}/{args.pairs}, memory_reuse {setting}: done", file=sys.stderr)
    print(f"{args.model} / {args.scheme}, prefill batch {args.batch} x {runs['on'][0].get('threads')} threads; "
          f"{args.pairs} processes per setting, alternated, {args.rounds} rounds each")
    print("| memory_reuse | allocator | baseline ms | scheme ms | speed-up [p10, p90] | page faults per forward "
          "(baseline / scheme) |")
    print("|---|---|---:|---:|---|---|")
    for setting, procs in runs.items():
        base = [x for p in procs for x in p["ms"]["baseline"]]
        quant = [x for p in procs for x in p["ms"]["scheme"]]
        ratios = sorted(b / q for b, q in zip(base, quant))
        fb = statistics.median(x for p in procs for x in p["faults"]["baseline"])
        fq = statistics.median(x for p in procs for x in p["faults"]["scheme"])
        print(f"| {setting} | {procs[0]['allocator']} | {statistics.median(base):.1f} | {statistics.median(quant):.1f} "
              f"| {statistics.median(ratios):.2f}x [{ratios[len(ratios) // 10]:.2f}, "
              f"{ratios[(9 * len(ratios)) // 10]:.2f}] | {fb:,.0f} / {fq:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
