"""The `qbench` command: thin Typer commands over qbench.api."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from qbench.errors import ConfigError, GateFailed, QbenchError, RunError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark quantized models against their baseline and render quantization cards.")


def _err(msg: str) -> None:
    # always one line: values quoted from the user's file may hold line breaks
    typer.echo("qbench: error: " + "\\n".join(str(msg).splitlines()), err=True)


def handled(fn):
    """Turn qbench errors into one line on stderr and their exit code (qbench.errors lists them)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QbenchError as e:
            _err(str(e))
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            _err("interrupted; finished cells are on disk (qbench run --resume RUN_DIR)")
            raise typer.Exit(130)
    return wrapper


@app.command()
@handled
def run(experiment: Optional[Path] = typer.Argument(None, help="Experiment YAML file (optional with --resume: "
                                                     "the run folder stores its experiment)."),
        out: Path = typer.Option(Path("reports"), "--out", help="Base folder; the run goes in OUT/<name>/<time>-<hw>/."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Make every check the run makes before measuring "
                                     "(model shapes included) and print the plan; measure nothing."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Finish an interrupted run in this folder."),
        executor: str = typer.Option("auto", "--executor", help="How cells run: auto (in process, or a "
                                     "subprocess per cell when measure.isolate or cell_timeout_s is set), "
                                     "inprocess, subprocess, or ray (a Ray cluster; pip install "
                                     "\"qbench-cards[ray]\")."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: the "
                                                  "cluster's HOST:PORT (as `ray start --head` prints it) or "
                                                  "auto; default RAY_ADDRESS, else a local one-node cluster."),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars.")):
    """Quantize, measure, and render the card of an experiment."""
    import signal

    from qbench import api

    log = lambda s: typer.echo(s, err=True)  # noqa: E731
    if dry_run:
        if experiment is None:
            raise ConfigError("--dry-run needs an experiment file")
        for line in api.dry_run(experiment, log=log).describe():
            typer.echo(line)
        return
    # SIGTERM (a scheduler, a CI timeout) stops like Ctrl-C: finished cells are already on disk
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    outcome = api.run(experiment, out=out, resume=resume, progress=not no_progress and sys.stderr.isatty(),
                      log=log, executor=executor, ray_address=ray_address)
    for kind, path in outcome.card.items():
        typer.echo(f"{kind}: {path}")
    if outcome.failed:
        raise RunError(f"{len(outcome.failed)} cell(s) failed: {', '.join(outcome.failed)} (reasons in the card)")
    if api.gates_failed(outcome.gates):
        raise GateFailed("a gate failed (verdicts above and in the card)")


@app.command()
@handled
def validate(experiments: List[Path] = typer.Argument(..., help="Experiment YAML files.")):
    """Check experiment files without running anything (exit 2 on the first bad file)."""
    from qbench import api

    for path, exp in zip(experiments, api.validate(experiments)):
        typer.echo(f"{path}: ok ({len(exp.models)} models x {len(exp.schemes)} schemes x "
                   f"{len(exp.workloads)} workloads)")
        for w in exp.warnings():
            typer.echo(f"warning: {path}: {w}", err=True)


@app.command()
@handled
def card(results_dir: Path = typer.Argument(..., help="A run folder (holds meta.json and cells/)."),
         hf: bool = typer.Option(False, "--hf", help="Also write a Hugging Face model-card snippet "
                                 "(front matter with base_model, base_model_relation: quantized)."),
         model: Optional[str] = typer.Option(None, "--model", help="Model for --hf (when the run has several)."),
         scheme: Optional[str] = typer.Option(None, "--scheme", help="Scheme for --hf (when the run has several).")):
    """Re-render card.md, card.html and card.json from a results folder; measures nothing."""
    from qbench import api

    for kind, path in api.card(results_dir).items():
        typer.echo(f"{kind}: {path}")
    for line in api.verdict_lines(api.gate_verdicts(results_dir)):
        typer.echo(line)
    if hf:
        typer.echo(f"hf: {api.hf_snippet(results_dir, model=model, scheme=scheme)}")


@app.command()
@handled
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Detected hardware and software."""
    import json

    from qbench import api

    info = api.env()
    fingerprint = api.fingerprint
    if as_json:
        typer.echo(json.dumps(dict(info.to_dict(), fingerprint=fingerprint(info)), indent=2))
        return
    typer.echo(info.summary())
    typer.echo(f"fingerprint: {fingerprint(info)}")
    for key, value in info.to_dict().items():
        if key != "packages":
            typer.echo(f"{key}: {value}")
    typer.echo("packages: " + ", ".join(f"{k} {v}" for k, v in sorted(info.packages.items())))


@app.command()
@handled
def schema(card_schema: bool = typer.Option(False, "--card", help="Print the JSON Schema of card.json instead."),
           cell: bool = typer.Option(False, "--cell", help="Print the JSON Schema of a run's cells/<id>.json."),
           meta: bool = typer.Option(False, "--meta", help="Print the JSON Schema of a run's meta.json.")):
    """JSON Schema of experiment files (or of card.json, cell files, meta.json)."""
    import json

    from qbench import api

    if card_schema + cell + meta > 1:
        raise ConfigError("choose one of --card, --cell, --meta")
    if card_schema or cell or meta:
        typer.echo(json.dumps(api.card_schema() if card_schema else api.record_schema("cell" if cell else "meta"),
                              indent=1))
        return
    typer.echo(api.experiment_schema())


@app.command()
@handled
def compare(run_a: Path = typer.Argument(..., help="Reference run folder."),
            run_b: Path = typer.Argument(..., help="Run folder compared against it."),
            out: Optional[Path] = typer.Option(None, "--out", help="Where to write compare.md/html/json "
                                               "(default: RUN_B/compare-<RUN_A name>/).")):
    """Compare two runs: deltas with intervals, warnings when hardware or software differ."""
    import json

    from qbench import api

    paths = api.compare(run_a, run_b, out)
    ctx = json.loads(Path(paths["compare.json"]).read_text(encoding="utf-8"))
    for w in ctx.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


@app.command()
@handled
def publish(runs: list[Path] = typer.Argument(..., help="Run folders to publish."),
            out: Path = typer.Option(..., "--out", help="Folder to write the site to (index.html, feed.jsonl, "
                                     "plots/, runs/).")):
    """Build a static site of cards: a sortable, filterable index of every run x model x scheme, per-model
    frontier plots, a JSON-lines feed, and each card in one set of colours."""
    from qbench import api

    written = api.publish(runs, out)
    typer.echo(f"index.html: {written['index.html']}")
    typer.echo(f"feed.jsonl: {written['feed.jsonl']} ({sum(1 for _ in open(written['feed.jsonl']))} lines)")
    typer.echo(f"{sum(1 for k in written if k.startswith('runs/'))} card(s), "
               f"{sum(1 for k in written if k.startswith('plots/'))} frontier plot(s)")


@app.command()
@handled
def sensitivity(experiment: Path = typer.Argument(..., help="Experiment YAML file: its models, and its engine "
                                                  "schemes as candidate formats."),
                model: Optional[str] = typer.Option(None, "--model", help="Only this model (id or name)."),
                out: Optional[Path] = typer.Option(None, "--out", help="Folder for sensitivity.json/.md/.html/.png "
                                                   "(default reports/<experiment>/sensitivity/<model>)."),
                samples: int = typer.Option(8, "--samples", help="Calibration samples."),
                seq_len: int = typer.Option(64, "--seq-len", help="Tokens per calibration sample."),
                no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar.")):
    """Rank a model's units (a linear, or the linears sharing an input) by what quantizing each one alone does:
    end-to-end KL (causal LMs) or 1 - cosine (encoders) and output SQNR, per candidate scheme, on calibration
    data only."""
    from qbench import api

    written = api.sensitivity(experiment, model=model, out=out, samples=samples, seq_len=seq_len,
                              log=lambda s: typer.echo(s, err=True), progress=not no_progress)
    for name, paths in written.items():
        for kind, path in paths.items():
            typer.echo(f"{name} {kind}: {path}")


@app.command("list")
@handled
def list_(what: str = typer.Argument("kernels", help="kernels, models or datasets")):
    """List kernels, bundled models or built-in datasets."""
    from qbench import api

    if what == "kernels":
        kernels, op_kernels = api.kernels(), api.op_kernels()
        width = max(18, *(len(n) for n in [*kernels, *op_kernels]))
        for name, k in kernels.items():
            typer.echo(f"{name:{width}s} {'emulated' if k.emulated else k.arithmetic:8s} "
                       f"{'/'.join(k.devices):9s} {k.backend}")
        typer.echo("ops around the linears (ops: [attention, residual]; chosen by device, not by `kernel:`):")
        for name, (backend, emulated) in op_kernels.items():
            typer.echo(f"{name:{width}s} {'emulated' if emulated else 'integer':8s} "
                       f"{'cpu' if name.startswith('int8_attention') else 'any':9s} {backend}")
    elif what == "models":
        for name, b in api.bundled_models().items():
            typer.echo(f"{name:10s} {b.origin} ({b.install})")
        typer.echo("hf:<id>    any transformers model by hub id or local directory")
        typer.echo("gguf:<path> any local GGUF file transformers can dequantize (baseline: its dequantization)")
    elif what == "datasets":
        for name, desc in api.builtin_datasets().items():
            typer.echo(f"{name:14s} {desc}")
        typer.echo("<path>.txt / <path>.jsonl  user files")
    else:
        from qbench.registry import did_you_mean

        raise ConfigError(f"cannot list '{what}'{did_you_mean(what, ['kernels', 'models', 'datasets'])}; "
                          "use kernels, models or datasets")


bench_app = typer.Typer(no_args_is_help=True,
                        help="Speed benchmarks that print ratios measured side by side in one run.")
app.add_typer(bench_app, name="bench")


@bench_app.command("gemm", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                   add_help_option=False)
def bench_gemm(ctx: typer.Context):
    """GEMM benchmark: qbench's int8/int4 kernels against fp32, bf16 and the best CPU peers (--help for options)."""
    from qbench import api

    try:
        api.bench_gemm(list(ctx.args), prog="qbench bench gemm")
    except SystemExit as e:               # argparse: --help exits 0, bad options exit 2; a message: bad input
        if isinstance(e.code, str):
            _err(e.code)
        raise typer.Exit(e.code if isinstance(e.code, int) else 2)


@bench_app.command("model")
@handled
def bench_model(experiment: Path = typer.Argument(..., help="Experiment YAML file: its models and engine schemes."),
                model: Optional[str] = typer.Option(None, "--model", help="Only this model (id or name)."),
                scheme: Optional[list[str]] = typer.Option(None, "--scheme", help="Only this scheme (repeatable)."),
                batch: int = typer.Option(1, "--batch", help="Sequences per forward."),
                seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence (default: "
                                                      "the experiment's measure.seq_len)."),
                repeats: int = typer.Option(10, "--repeats", help="Timed rounds per phase."),
                warmup: int = typer.Option(2, "--warmup", help="Untimed rounds first."),
                out: Optional[Path] = typer.Option(None, "--out", help="Folder for profile.json/.md (default "
                                                   "reports/<experiment>/profile/<model>)."),
                no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar.")):
    """Where a forward's time goes: per model x scheme, prefill and one decode step (causal LMs), timed
    round-robin against the baseline and profiled per module kind (linear, attention, norm, activation,
    embedding, other), with the speed-up the model could reach if its linears were free."""
    from qbench import api
    from qbench.report.profile import markdown

    done = api.bench_model(experiment, model=model, schemes=scheme, batch_size=batch, seq_len=seq_len,
                           repeats=repeats, warmup=warmup, out=out, log=lambda s: typer.echo(s, err=True),
                           progress=not no_progress)
    for name, d in done.items():
        typer.echo(markdown(d["report"]))
        for kind, path in d["files"].items():
            typer.echo(f"{name} {kind}: {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
