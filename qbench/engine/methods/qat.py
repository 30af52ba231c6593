"""qat: quantization-aware training, a short distillation run that starts from round to nearest.

    trained = QAT.train(model, names, wspec, aspec, params, data)   # model trained in place
    qw = QAT.quantize(weight, wspec, MethodContext(name, learned=trained.qparams[name]))

What one run does:
- every planned linear gets the round-to-nearest qparams of its weight (the PTQ starting point) and, for the
  training, a fake-quantized forward: W_fq = s * (clamp(round(W / s) + z, qmin, qmax) - z), rounding passed
  straight through (d round(u) / du := 1; codes clamped at qmin/qmax pass no gradient to W). With
  `learn_scales: true` the scale s is a trained parameter too (LSQ, Esser et al. 2020, "Learned Step Size
  Quantization"): its gradient follows from the same expression, (round(W/s) - W/s) inside the range and
  (qmin - z) or (qmax - z) outside. Zero points stay at their PTQ value. Activations of a W8A8 scheme are
  quantized too, with qparams from each batch (static ranges are set after training by the usual calibration);
- the loss is distillation against the unquantized teacher, so no labels are needed: mean over real tokens of
  KL(teacher || student) of the next-token distributions (causal LMs), or 1 - cosine of each token's last hidden
  state plus 1 - cosine of the mean-pooled embedding (encoders); `distill: false` on a causal LM trains on
  next-token cross entropy over the calibration text instead;
- only the planned linears' weights (and learned scales) train; norms, embeddings and biases stay as they were.
  Adam, learning rate warmed up linearly over the first 10% of steps then cosine-decayed to 10%. The models run
  in eval mode (no dropout), batches are drawn from the calibration pool in an order fixed by the seed (a fresh
  permutation per pass over the pool), so a run is a function of (weights, data, parameters, seed, threads);
- every `checkpoint_every` steps the trained tensors, the optimizer state and the losses so far are saved
  (atomically) to `data.checkpoint_dir`; a run that finds a checkpoint continues from it, and one that finds
  the final state loads it instead of training (the text and code cells of one scheme train once).

Export: the trained weight W and scale s give codes clamp(round(W / s) + z) with qparams (s, z): the
QuantizedWeight every kernel packs, whose dequantization is exactly the fake-quantized weight of the last step.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

from qbench.engine.methods.base import METHODS, Method
from qbench.engine.primitives import (QuantSpec, broadcast_qparams, choose_qparams, fake_quantize, quantize,
                                      reduce_minmax)
from qbench.engine.tensors import QuantizedWeight

FINAL = "final.pt"
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainingData:
    """What a training method needs beyond the model: the calibration pool and the teacher."""

    batch: Mapping[str, torch.Tensor]      # the tokenized calibration pool, (N, T) each
    task: str                               # causal_lm | encoder
    teacher: nn.Module                      # the unquantized model (never modified)
    seed: int = 0
    checkpoint_dir: Optional[Path] = None   # where checkpoints and the final state go (None: nowhere)
    progress: Optional[Callable[[int, int, float], None]] = None   # (step, steps, loss) after each step


@dataclass
class Trained:
    """The outcome of a QAT run: learned qparams per linear and the training log."""

    qparams: dict[str, tuple[torch.Tensor, torch.Tensor]]   # name -> (scale, zero_point)
    losses: list[float]
    seconds: float                 # training time (of the run that trained, when loaded from its final state)
    tokens: int                    # real (unpadded) tokens seen
    resumed_from: int = 0          # the step a checkpoint resumed at (0: none)
    loaded: bool = False           # the final state came from an earlier run
    extra: dict = field(default_factory=dict)


def round_ste(u: torch.Tensor) -> torch.Tensor:
    """round(u) forward, identity backward (the straight-through estimator)."""
    return u + (torch.round(u) - u).detach()


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
                      ) -> torch.Tensor:
    """s * (clamp(round_ste(w / s) + z, qmin, qmax) - z) for an (N, K) weight, differentiable in w and s."""
    s, z = broadcast_qparams(scale, w, spec), broadcast_qparams(zero_point.to(w.dtype), w, spec)
    q = torch.clamp(round_ste(w / s) + z, spec.qmin, spec.qmax)
    return (q - z) * s


def linear_weight(mod: nn.Module):
    """engine.modules.linear_weight, imported when first used (engine.modules imports the kernels, which import
    the methods)."""
    from qbench.engine.modules import linear_weight as lw

    return lw(mod)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    """engine.modules.set_submodule, imported when first used (as linear_weight)."""
    from qbench.engine.modules import set_submodule

    set_submodule(model, name, new)


def fake_quant_activation(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The activation quantize-dequantize with qparams from x itself, its gradient passed straight through."""
    return x + (fake_quantize(x.detach(), spec) - x).detach()


class FakeQuantLinear(nn.Module):
    """A linear (nn.Linear or Conv1D) computed with its fake-quantized weight (and input) during training."""

    def __init__(self, inner: nn.Module, spec: QuantSpec, act: Optional[QuantSpec], learn_scale: bool):
        super().__init__()
        self.inner, self.spec, self.act = inner, spec, act
        w = linear_weight(inner)[0].detach().float()
        scale, zero = choose_qparams(*reduce_minmax(w, spec), spec)
        self.scale = nn.Parameter(scale.clone(), requires_grad=learn_scale)
        self.register_buffer("zero_point", zero.clone())

    def weight_fq(self) -> torch.Tensor:
        w = linear_weight(self.inner)[0]
        return fake_quant_weight(w, self.scale.clamp_min(1e-12), self.zero_point, self.spec).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = fake_quant_activation(x, self.act)
        return F.linear(x, self.weight_fq(), linear_weight(self.inner)[1])


class QuantizationAwareTraining(Method):
    name = "qat"
    needs_calibration = True
    trains = True

    def quantize(self, weight, spec, context=None):
        learned = getattr(context, "learned", None)
        if learned is None:
            raise ValueError("qat quantizes with the qparams its training learned: run it through quantize_ "
                             "with training data")
        scale, zero = learned
        return QuantizedWeight.from_qtensor(quantize(weight.detach().float(), spec, scale, zero))

    def train(self, model: nn.Module, names: list[str], spec: QuantSpec, act: Optional[QuantSpec],
              params: Mapping[str, object], data: TrainingData) -> Trained:
        """Train `model` in place (see the module docstring); returns the learned qparams and the log."""
        if spec.is_table:
            raise ValueError(f"qat trains integer grids; {spec.format} is a value table")
        if data.task != "causal_lm" and not params["distill"]:
            raise ValueError("qat on an encoder needs distill: true (it has no labels to train on)")
        wrappers = _wrap(model, names, spec, act, bool(params["learn_scales"]))
        try:
            return _run(model, wrappers, params, data)
        finally:
            _unwrap(model, wrappers)


def _wrap(model, names, spec, act, learn_scale) -> dict[str, FakeQuantLinear]:
    wrappers = {}
    for name in names:
        inner = model.get_submodule(name)
        wrappers[name] = FakeQuantLinear(inner, spec, act, learn_scale)
        _set(model, name, wrappers[name])
    return wrappers


def _unwrap(model, wrappers) -> None:
    for name, w in wrappers.items():
        _set(model, name, w.inner)


def _trainables(wrappers) -> list[tuple[str, nn.Parameter]]:
    """(key, parameter) of what trains, in a fixed order: each linear's weight, then its scale when learned."""
    out, seen = [], set()
    for name, w in wrappers.items():
        weight = w.inner.weight
        if id(weight) not in seen:          # a weight tied to another planned module trains once
            seen.add(id(weight))
            out.append((f"{name}.weight", weight))
        if w.scale.requires_grad:
            out.append((f"{name}.scale", w.scale))
    return out


def _run(model, wrappers, params, data: TrainingData) -> Trained:
    trainables = _trainables(wrappers)
    was = {p: p.requires_grad for p in model.parameters()}
    try:
        return _loop(model, wrappers, trainables, params, data)
    finally:
        for p, flag in was.items():
            p.requires_grad_(flag)


def _loop(model, wrappers, trainables, params, data: TrainingData) -> Trained:
    steps, bs = int(params["steps"]), int(params["batch_size"])
    every = int(params["checkpoint_every"])
    learned = {p for _, p in trainables}
    for p in model.parameters():
        p.requires_grad_(p in learned)
    ckdir = data.checkpoint_dir
    final = _load(ckdir / FINAL) if ckdir else None
    if final is not None:
        _restore(trainables, final["tensors"])
        return _trained(wrappers, final["losses"], final["seconds"], final["tokens"], loaded=True)
    opt = torch.optim.Adam([p for _, p in trainables], lr=float(params["lr"]))
    losses: list[float] = []
    start, seconds, tokens = 0, 0.0, 0
    ck = _load(ckdir / CHECKPOINT) if ckdir else None
    if ck is not None:
        _restore(trainables, ck["tensors"])
        opt.load_state_dict(ck["optimizer"])
        start, losses, seconds, tokens = ck["step"], list(ck["losses"]), ck["seconds"], ck["tokens"]
    model.eval()
    data.teacher.eval()
    n = data.batch["input_ids"].shape[0]
    t0 = time.perf_counter()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = float(params["lr"]) * lr_factor(step, steps)
        batch = {k: v[batch_indices(step, bs, n, data.seed)] for k, v in data.batch.items()}
        loss = step_loss(model, data.teacher, batch, data.task, bool(params["distill"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        if data.progress:
            data.progress(step + 1, steps, losses[-1])
        if ckdir and every and (step + 1) % every == 0 and step + 1 < steps:
            _save(ckdir / CHECKPOINT, {"step": step + 1, "tensors": _state(trainables),
                                       "optimizer": opt.state_dict(), "losses": losses, "tokens": tokens,
                                       "seconds": seconds + time.perf_counter() - t0})
    seconds += time.perf_counter() - t0
    if ckdir:
        _save(ckdir / FINAL, {"tensors": _state(trainables), "losses": losses, "seconds": seconds,
                              "tokens": tokens})
        (ckdir / CHECKPOINT).unlink(missing_ok=True)
    return _trained(wrappers, losses, seconds, tokens, resumed_from=start)


def _trained(wrappers, losses, seconds, tokens, resumed_from=0, loaded=False) -> Trained:
    qp = {name: (w.scale.detach().clamp_min(1e-12).clone(), w.zero_point.clone()) for name, w in wrappers.items()}
    return Trained(qp, list(losses), float(seconds), int(tokens), resumed_from, loaded)


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of steps (at least one), then cosine decay from 1 to 0.1."""
    warm = max(1, steps // 10)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The pool rows of training step `step`: consecutive slices of a seeded permutation per pass over the pool
    (a function of its arguments alone, so a resumed run draws what an uninterrupted one would)."""
    rows = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        rows.append(int(torch.randperm(n, generator=g)[pos]))
    return torch.tensor(rows, dtype=torch.long)


def step_loss(student: nn.Module, teacher: nn.Module, batch: Mapping[str, torch.Tensor], task: str,
              distill: bool) -> torch.Tensor:
    """The training loss of one batch (see the module docstring)."""
    mask = batch.get("attention_mask")
    if task == "causal_lm":
        logits = student(**batch).logits.float()
        real = (mask if mask is not None else torch.ones(logits.shape[:2])).bool()
        if not distill:
            labels = batch["input_ids"][:, 1:]
            keep = real[:, 1:] & real[:, :-1]
            return F.cross_entropy(logits[:, :-1][keep], labels[keep])
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(**batch).logits.float(), dim=-1)
        s_logp = F.log_softmax(logits, dim=-1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)        # (B, T)
        return kl[real].mean()
    h = student(**batch).last_hidden_state.float()
    with torch.no_grad():
        t = teacher(**batch).last_hidden_state.float()
    m = (mask if mask is not None else torch.ones(h.shape[:2])).to(h.dtype)
    tok = 1 - F.cosine_similarity(h, t, dim=-1)
    tok = (tok * m).sum() / m.sum()
    pool = lambda x: (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    return tok + (1 - F.cosine_similarity(pool(h), pool(t), dim=-1)).mean()


def _state(trainables) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in trainables}


def _restore(trainables, tensors: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k, _ in trainables if k not in tensors]
    if missing:
        raise ValueError(f"qat checkpoint does not match the model (no '{missing[0]}')")
    with torch.no_grad():
        for k, p in trainables:
            p.copy_(tensors[k])


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


QAT = QuantizationAwareTraining()
METHODS.add(QAT.name, QAT)
