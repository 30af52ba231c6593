"""qbench's own forward of a Llama-family decoder, for timing prefill and decode (measure.lm_forward: qbench).

transformers' forward of a small decoder spends most of a decode step outside its matmuls: per layer it builds
rotary tables, updates a growing cache, dispatches through an attention registry and wraps every module call; on
SmolLM2-135M that is about 100 PyTorch ops a layer, milliseconds a token on a CPU. `DecoderGraph` runs the same
model -- its own embedding, its own linear modules (nn.Linear, or qbench's QuantLinear with whatever kernel it
holds, each called as its module's forward computes), its RMSNorm weights and rotary frequencies -- over a KV
cache allocated once, with the float work around the linears either

- in PyTorch ops, the same ones in the same order as transformers: logits bit for bit equal to the model's own
  forward (tests), or
- in qbench's C kernels (native/decoder.c, the default on a float32 CPU model): the residual add fused into each
  RMSNorm, the MLP's SiLU and gating in one pass, a decode step's rotary embedding, cache write and attention
  in one call, and a prefill's rotary embedding and cache write in one call before torch's SDPA. Equal to float32 rounding
  on a float model (3e-5 to 5e-5 at most in SmolLM2-135M's logits); with int8 activations a rounding difference can move
  an activation code by one step, so a quantized model's logits differ more (SmolLM2-135M W4A8 g64 over a prompt
  and 16 decode steps: KL 0.021 from its own forward's, against 0.48 between it and the float model).

At decode sizes a layer's q, k and v projections run as one call, and its gate and up projections as another,
where their kernels can join them (`joined`, Kernel.join): on SmolLM2-135M a quantized decode step reads its
weights as 4 streams a layer instead of 7, 3-11% faster (benchmarks/decode.py --apart), the logits bit for bit the same.

On the C path a decode step is static (`static_step`, the default there): for each batch size, the step's calls
are laid out once as a list over buffers allocated once, each quantized linear bound to its buffers
(Kernel.bind: the C call with its arguments converted once), each float linear a matmul into its buffer, so a
step runs ~250 C calls and no argument checks or allocations between them. On SmolLM2-135M that took W4A8 g64's
decode step from 6.7 to 4.6 ms (benchmarks/decode.py --op-by-op), the logits bit for bit those of the same graph
called op by op. The thread counts of the bound calls are the ones torch had when the step was first laid out.

It computes what the model's own forward computes for unpadded input (the timing path's input). It refuses, with
the reason, what it does not cover: other architectures, sliding-window or dynamically rescaled rotary attention
inside the planned length, and models whose attention or residual ops qbench quantized (those run inside the
model's own modules; time them with lm_forward: transformers).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qbench.engine.kernels import native
from qbench.engine.kernels.native_status import native_reason
from qbench.errors import ModelError

# model_type -> what its layers are made of: transformers' Llama, Mistral and Qwen2 decoders share the layer
# (pre-norm RMSNorm, q/k/v/o projections with rotary embeddings, grouped-query SDPA, SiLU-gated MLP)
ARCHITECTURES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


class GraphUnsupported(ModelError):
    """The model is not one DecoderGraph runs (the message says why)."""


def unsupported_reason(model: nn.Module, max_tokens: int = 0) -> Optional[str]:
    """Why DecoderGraph cannot run `model` for sequences of up to `max_tokens` (None when it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHITECTURES:
        return (f"qbench's decoder forward covers {', '.join(ARCHITECTURES)} models; this one is "
                f"{kind or type(model).__name__}")
    prefix = ARCHITECTURES[kind]
    inner = getattr(model, "model", None)
    if type(model).__name__ != f"{prefix}ForCausalLM" or inner is None:
        return f"expects {prefix}ForCausalLM, got {type(model).__name__}"
    expected = {"layer": f"{prefix}DecoderLayer", "self_attn": f"{prefix}Attention", "mlp": f"{prefix}MLP",
                "input_layernorm": f"{prefix}RMSNorm", "post_attention_layernorm": f"{prefix}RMSNorm"}
    for i, layer in enumerate(inner.layers):
        parts = {"layer": layer, **{k: getattr(layer, k, None) for k in list(expected)[1:]}}
        for part, cls in expected.items():
            if type(parts[part]).__name__ != cls:
                return (f"layer {i}'s {part} is {type(parts[part]).__name__}, not transformers' {cls} (a module "
                        "qbench or another tool replaced runs only in the model's own forward)")
        if hasattr(layer.self_attn, "qbench_attention") or hasattr(layer, "qbench_residual"):
            return ("the scheme quantizes attention or residual ops, which run inside the model's own modules: "
                    "time it with measure.lm_forward: transformers")
        if getattr(layer.mlp, "act_fn", None) is None or type(layer.mlp.act_fn).__name__ not in ("SiLU",
                                                                                               "SiLUActivation"):
            return f"layer {i}'s MLP activation is {type(getattr(layer.mlp, 'act_fn', None)).__name__}, not SiLU"
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    window = getattr(cfg, "sliding_window", None)
    if kinds != {"full_attention"} or (window is not None and (getattr(cfg, "use_sliding_window", True)
                                                               and window < max_tokens)):
        return f"sliding-window attention ({sorted(kinds)}, window {window}) within {max_tokens} tokens"
    rope = getattr(inner, "rotary_emb", None)
    rope_type = str(getattr(rope, "rope_type", ""))
    if rope is None or not hasattr(rope, "inv_freq") or "dynamic" in rope_type or "longrope" in rope_type:
        return f"rotary embedding of type {rope_type or 'unknown'}: its frequencies change with the length"
    return None


def float_ops_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why qbench's C kernels cannot do the decoder's float work for a model on `device` computing in `dtype`
    (None when they can)."""
    if device.type != "cpu":
        return f"the model is on {device}"
    if dtype != torch.float32:
        return f"the model computes in {dtype}"
    return native_reason()


def direct(mod: nn.Module):
    """A linear module as a function of a 2-D (rows, in) input with the module's own computation, minus the
    module call around it: qbench's QuantLinear as its kernel's forward on its state, torch's nn.Linear as
    F.linear on its weight and bias; any other module as itself."""
    from qbench.engine.modules import QuantLinear

    if type(mod) is QuantLinear:
        kernel, state = mod.kernel, mod.state
        return lambda x: kernel.forward(state, x)
    if type(mod) is nn.Linear:
        w, b = mod.weight, mod.bias
        return lambda x: torch.nn.functional.linear(x, w, b)
    return mod


def _copied(fn, x: torch.Tensor, y: torch.Tensor):
    def run():
        y.copy_(fn(x))
    return run


def _matmul(w: torch.Tensor, b: Optional[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """y = x w^T + b into y (what F.linear computes for a 2-D input: addmm, or mm without a bias)."""
    wt = w.t()
    if b is None:
        return lambda: torch.mm(x, wt, out=y)
    return lambda: torch.addmm(b, x, wt, out=y)


def _kernel_binder(kernel, state):
    """(x, y) -> the kernel's bound C call on these buffers (Kernel.bind), or its forward copied into y."""
    return lambda x, y: kernel.bind(state, x, y) or _copied(lambda z: kernel.forward(state, z), x, y)


def binder(mod: nn.Module):
    """A linear module as a function (x, y) -> a no-argument call writing the module's output for x into y, the
    buffers fixed for the call's life (the static decode step): the kernel's bound C call for a QuantLinear
    (Kernel.bind), its matmul into y for an nn.Linear; otherwise (a kernel without a bound path, any other module)
    the `direct` call copied into y."""
    from qbench.engine.modules import QuantLinear

    if type(mod) is QuantLinear:
        return _kernel_binder(mod.kernel, mod.state)
    if type(mod) is nn.Linear:
        return lambda x, y: _matmul(mod.weight, mod.bias, x, y)
    return lambda x, y: _copied(direct(mod), x, y)


# linear modules of a layer that read the same input: (the module holding them, their names, the joined name)
SIBLINGS = (("self_attn", ("q", "k", "v"), "qkv"), ("mlp", ("gate", "up"), "gate_up"))
# inputs of up to this many rows (a decode step's) run joined siblings as one call: their weights, side by side
# in memory, are then read as one stream. Larger inputs are compute-bound and gain nothing from it (measured
# on SmolLM2-135M, 2 threads: a 128-row float32 gate and up 5% slower as one matmul), so each part runs alone.
JOIN_MAX_ROWS = 16


def joined(mods: list[nn.Module]):
    """Sibling linear modules (the same input) as (call, bind), or None where they cannot be joined. call: a
    function of a 2-D input to the tuple of their outputs, which runs them as one call for inputs of up to
    JOIN_MAX_ROWS rows; bind: as `binder`, for the joined output (the parts' side by side). They can be joined
    when they are QuantLinears whose kernel joins their states (Kernel.join), or nn.Linears of one input size,
    dtype and device, all with or all without a bias (their weights concatenated). Either way each module's
    weight becomes a view of the joined one (values unchanged, one copy in memory), so each module still
    computes what it computed, alone or joined."""
    from qbench.engine.modules import QuantLinear

    sizes = [m.out_features for m in mods]
    if all(type(m) is QuantLinear for m in mods) and len({id(m.kernel) for m in mods}) == 1:
        kernel, states = mods[0].kernel, [m.state for m in mods]
        state = kernel.join(states)
        if state is None:
            return None
        return ((lambda x: (kernel.forward(state, x).split(sizes, dim=-1) if x.shape[0] <= JOIN_MAX_ROWS else
                            tuple(kernel.forward(s, x) for s in states))),
                _kernel_binder(kernel, state))
    if (not all(type(m) is nn.Linear for m in mods)
            or len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in mods}) != 1):
        return None
    with torch.no_grad():
        w = torch.cat([m.weight for m in mods])
        b = None if mods[0].bias is None else torch.cat([m.bias for m in mods])
        at = 0
        for m in mods:
            m.weight.data = w[at:at + m.out_features]
            if b is not None:
                m.bias.data = b[at:at + m.out_features]
            at += m.out_features
    linear = torch.nn.functional.linear
    return ((lambda x: (linear(x, w, b).split(sizes, dim=-1) if x.shape[0] <= JOIN_MAX_ROWS else
                        tuple(linear(x, m.weight, m.bias) for m in mods))),
            (lambda x, y: _matmul(w, b, x, y)))


class DecoderGraph:
    """The model's forward for (B, T) unpadded token ids, then one token per sequence at a time, over a KV cache
    of `max_tokens` positions per sequence allocated here.

    prefill(ids) -> (B, vocab) logits of the last position; step(tokens (B,)) -> (B, vocab) logits of the next.

    The float work around the linears runs in qbench's C kernels (decoder.c: the residual add fused into each
    RMSNorm, the MLP's SiLU and gating, a decode step's rotary embedding, cache write and attention in one call,
    a prefill's rotary embedding and cache write in one call) where `native` is true;
    None picks them for a float32 CPU model where the native library loads. Otherwise, or False, PyTorch ops in
    transformers' own order. `float_ops` says which ran. With `join` (the default), at decode sizes (up to
    JOIN_MAX_ROWS rows) a layer's q, k and v projections run as one call, and its gate and up projections as
    another, wherever `joined` can join them (their weights then sit side by side in memory, read as one
    stream); `joins` says where. With `profile`,
    every call is timed by kind (profile_step: one decode step's time in linears, attention, norms, activation,
    embedding and the rest).
    """

    def __init__(self, model: nn.Module, batch: int, max_tokens: int, native: Optional[bool] = None,
                 profile: bool = False, join: bool = True, static_step: bool = True):
        why = unsupported_reason(model, max_tokens)
        if why:
            raise GraphUnsupported(why)
        inner, cfg = model.model, model.config
        self.embed, self.layers, self.norm, self.head = inner.embed_tokens, list(inner.layers), inner.norm, \
            model.lm_head
        attn = self.layers[0].self_attn
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.norms = [(lay.input_layernorm, lay.post_attention_layernorm) for lay in self.layers]
        projections = [{n: getattr(part, f"{n}_proj") for part, names in
                        ((lay.self_attn, ("q", "k", "v", "o")), (lay.mlp, ("gate", "up", "down"))) for n in names}
                       for lay in self.layers]
        self.linears = [{n: direct(m) for n, m in mods.items()} for mods in projections]
        self.binders = [{n: binder(m) for n, m in mods.items()} for mods in projections]
        self.sizes = {name: [projections[0][n].out_features for n in names] for _, names, name in SIBLINGS}
        done = {name: 0 for _, _, name in SIBLINGS}
        for mods, lin, bind in zip(projections if join else [], self.linears, self.binders):
            for _, names, name in SIBLINGS:
                both = joined([mods[n] for n in names])
                if both is not None:
                    lin[name], bind[name] = both
                    done[name] += 1
        self.joins = (" and ".join(f"{'/'.join(names)} in {done[name]} of {len(self.layers)} layers"
                                   for _, names, name in SIBLINGS) + f" (inputs of up to {JOIN_MAX_ROWS} rows)"
                      if join else "none (join=False)")
        self.lm_head, self.embed_fn = direct(self.head), self.embed
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = self.embed.weight.dtype if hasattr(self.embed, "weight") else torch.float32
        with torch.no_grad():                # the model's own rotary tables, for every position at once
            pos = torch.arange(max_tokens, device=device)[None]
            cos, sin = inner.rotary_emb(torch.empty(0, device=device, dtype=dtype), pos)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()                   # (max_tokens, D)
        self._row: tuple = (-1, None, None)
        shape = (batch, self.kv_heads, max_tokens, self.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.model, self.batch, self.max_tokens, self.pos = model, batch, max_tokens, 0
        why_not = float_ops_reason(device, dtype)
        if native and why_not:
            raise GraphUnsupported(f"qbench's C kernels for the decoder's float work cannot run here: {why_not}")
        self.native = not why_not if native is None else bool(native)
        self.static_step = self.native and static_step
        self._plans: dict = {}
        self.float_ops = ("qbench's C kernels (decoder.c: RMSNorm with the residual add; the MLP's SiLU and "
                          "gating; a decode step's rotary embedding, cache write and attention; a prefill's rotary "
                          "embedding and cache write, before torch's SDPA)" if self.native else
                          f"PyTorch ops in transformers' order ({why_not or 'asked for'})") + (
            "; each decode step a fixed list of calls on buffers allocated once (kernels bound to them where "
            "they can be)" if self.static_step else "")
        self.seconds: Optional[dict[str, float]] = None
        self._plain: Optional[tuple] = None
        self._sync = torch.cuda.synchronize if self.cos.is_cuda else (lambda: None)   # around each timed call
        if profile:
            self.profiling(True)

    # ------------------------------------------------------------------ where the time goes
    KINDS = ("linear", "attention", "norm", "activation", "embedding")

    def profiling(self, on: bool) -> None:
        """From now on, time every call by kind (on; `seconds` then sums them), or stop (off: the calls run
        bare again). The kinds: the linears (the LM head included), the attention around them (rotary, cache,
        softmax and products), the norms (with their residual adds), the MLP's activation and gating, the
        embedding; a CUDA model is synchronized around each call."""
        import time

        if not on:
            if self._plain is not None:
                self.linears, self.lm_head, self.embed_fn, self._add_rms, self._attend, self._act = self._plain
                self._plain = self.seconds = None
            return
        if self._plain is not None:
            return
        self._plain = (self.linears, self.lm_head, self.embed_fn, self._add_rms, self._attend, self._act)
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        sync = self._sync

        def timed(kind, fn):
            def run(*args):
                sync()
                t0 = time.perf_counter()
                out = fn(*args)
                sync()
                self.seconds[kind] += time.perf_counter() - t0
                return out
            return run

        self.linears = [{n: timed("linear", f) for n, f in lin.items()} for lin in self.linears]
        self.lm_head = timed("linear", self.lm_head)
        self.embed_fn = timed("embedding", self.embed_fn)
        self._add_rms = timed("norm", self._add_rms)
        self._attend = timed("attention", self._attend)
        self._act = timed("activation", self._act)

    def profiled(self, run) -> dict[str, float]:
        """run() (a prefill or step of this graph) timed whole and by kind: {kind: seconds, ..., "other": the
        rest (Python and PyTorch glue), "total"}; profiling must be on."""
        import time

        if self.seconds is None:
            raise ValueError("profiling is off: make the DecoderGraph with profile=True or call profiling(True)")
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self._sync()
        t0 = time.perf_counter()
        run()
        self._sync()
        total = time.perf_counter() - t0
        return {**self.seconds, "other": max(0.0, total - sum(self.seconds.values())), "total": total}

    def profile_step(self, tokens: torch.Tensor, at: int) -> dict[str, float]:
        """One decode step of `tokens` at position `at` (the cache up to it as the last prefill or steps left
        it), profiled (see profiled)."""
        if self.seconds is None:
            raise ValueError("profile_step needs a DecoderGraph made with profile=True")

        def run():
            self.pos = at
            self.step(tokens)
        return self.profiled(run)

    # ------------------------------------------------------------------ PyTorch ops, in transformers' order
    @staticmethod
    def _rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # transformers' RMSNorm: in float32, then back to the input's dtype, times the weight
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * h.to(x.dtype)

    def _add_rms(self, norm: nn.Module, x: torch.Tensor, res: Optional[torch.Tensor]):
        """(x + res, its norm); res None: (x, its norm). The order of the two addends does not matter: a float
        addition rounds the same either way."""
        if self.native:
            return native.rmsnorm(x, norm.weight, norm.variance_epsilon, res)
        x = x if res is None else res + x
        return x, self._rms(norm, x)

    def _rotary(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary table's rows (cos, sin) for position t, made once per position, not once per layer."""
        if self._row[0] != t:
            self._row = (t, self.cos[t], self.sin[t])
        return self._row[1], self._row[2]

    def _rope(self, x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        # (B, H, T, D) rotated at positions t0..t1-1 (rotate_half convention: first half against second)
        cos, sin, half = self.cos[t0:t1], self.sin[t0:t1], self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def _attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, t0: int,
                t1: int) -> torch.Tensor:
        """(B * T, H * D) queries, (B * T, KV * D) keys and values of positions t0..t1-1 -> (B * T, H * D)
        attention output, the cache written at t0..t1-1."""
        t = t1 - t0
        if self.native:
            kc, vc = (self.k[i], self.v[i]) if b == self.batch else (self.k[i][:b], self.v[i][:b])
            if t == 1:
                return native.decode_attention(q, k, v, kc, vc, *self._rotary(t0), t0, self.scaling)
            q = native.prefill_rotary(q, k, v, kc, vc, self.cos, self.sin, t0, t)                # (B, H, T, D)
        else:
            q = self._rope(q.view(b, t, -1, self.head_dim).transpose(1, 2), t0, t1)        # (B, H, T, D)
            self.k[i][:b, :, t0:t1] = self._rope(k.view(b, t, -1, self.head_dim).transpose(1, 2), t0, t1)
            self.v[i][:b, :, t0:t1] = v.view(b, t, -1, self.head_dim).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, self.k[i][:b, :, :t1], self.v[i][:b, :, :t1], is_causal=t0 == 0 and t > 1, scale=self.scaling,
            enable_gqa=self.heads != self.kv_heads)
        return o.transpose(1, 2).reshape(b * t, -1)

    def _act(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.native:
            return native.silu_mul(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def _project(lin: dict, name: str, names: tuple, h: torch.Tensor) -> tuple:
        """The outputs of sibling projections of h: joined (column views of one call at decode sizes), or one
        call each."""
        return lin[name](h) if name in lin else tuple(lin[n](h) for n in names)

    def _run(self, ids: torch.Tensor, t0: int) -> torch.Tensor:
        b, t = ids.shape
        if b > self.batch or t0 + t > self.max_tokens:
            raise ValueError(f"qbench's decoder forward was set up for {self.batch} sequences of up to "
                             f"{self.max_tokens} tokens; got {b} x {t0 + t}")
        x, pending = self.embed_fn(ids).reshape(b * t, -1), None   # the residual stream (rows: sequence-major), and
        for i, lin in enumerate(self.linears):                  # what is still to be added to it
            norm1, norm2 = self.norms[i]
            x, h = self._add_rms(norm1, x, pending)
            o = self._attend(i, *self._project(lin, "qkv", ("q", "k", "v"), h), b, t0, t0 + t)
            x, h = self._add_rms(norm2, lin["o"](o), x)
            pending = lin["down"](self._act(*self._project(lin, "gate_up", ("gate", "up"), h)))
        self.pos = t0 + t
        last = lambda z: z.view(b, t, -1)[:, -1].contiguous()   # noqa: E731  (only the last position's logits)
        _, h = self._add_rms(self.norm, last(pending), last(x))
        return self.lm_head(h)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) prompt ids -> (B, vocab) logits of its last position; the cache restarts here."""
        return self._run(ids, 0)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) next tokens -> (B, vocab) logits of the position after them."""
        if self.static_step:
            return self._static(tokens)
        return self._run(tokens[:, None], self.pos)

    # ------------------------------------------------------------------ the static decode step
    def _plan(self, b: int) -> tuple:
        """(x, pending, h, ops) for decode steps of b sequences: the residual stream, the last MLP output and the
        norm output as buffers, and every call of the layers as (kind, a function of no arguments) on buffers
        allocated here, in the order of _run: the same kernels and C functions on the same values."""
        lib, p = native.lib(), native.ptr
        hidden = self.model.config.hidden_size
        new = lambda n: torch.empty(b, n, dtype=torch.float32)          # noqa: E731
        x, pending, h, att = new(hidden), new(hidden), new(hidden), new(self.heads * self.head_dim)
        d, kv, tmax = self.head_dim, self.kv_heads, self.max_tokens
        ops = []

        def rms(norm, src, res, xo):
            return native.bound(lib.qb_rmsnorm, (p(src), p(res), p(norm.weight), p(xo), p(h), b, hidden,
                                                 norm.variance_epsilon, native.threads(b * hidden)),
                                lambda rc: ValueError("native rmsnorm rejected its arguments"), keep=(norm, src, res, xo))

        def attend(i, q, k, v):
            kc, vc = self.k[i], self.v[i]
            fixed = (p(q), p(k), p(v), p(kc), p(vc))
            cos, sin, row, out = p(self.cos), p(self.sin), 4 * d, p(att)

            def run(keep=(q, k, v, kc, vc, att)):        # the position changes from step to step
                t = self.pos
                rc = lib.qb_decode_attention(*fixed, cos + row * t, sin + row * t, out, b, self.heads, kv, d, tmax,
                                             t, self.scaling, q.stride(0), k.stride(0),
                                             native.threads(2 * b * self.heads * (t + 1) * d))
                if rc:
                    raise ValueError(f"native decode_attention failed (code {rc})")
            return run

        def project(bind: dict, name: str, names: tuple, src: torch.Tensor) -> list:
            if name in bind:
                out = new(sum(self.sizes[name]))
                ops.append(("linear", bind[name](src, out)))
                return list(out.split(self.sizes[name], dim=1))
            outs = [new(n) for n in self.sizes[name]]
            ops.extend(("linear", bind[n](src, o)) for n, o in zip(names, outs))
            return outs

        for i, bind in enumerate(self.binders):
            norm1, norm2 = self.norms[i]
            ops.append(("norm", rms(norm1, x, pending if i else None, x)))
            q, k, v = project(bind, "qkv", ("q", "k", "v"), h)
            ops.append(("attention", attend(i, q, k, v)))
            o = new(hidden)
            ops.append(("linear", bind["o"](att, o)))
            ops.append(("norm", rms(norm2, o, x, x)))
            gate, up = project(bind, "gate_up", ("gate", "up"), h)
            act = new(gate.shape[1])
            ops.append(("activation", native.bound(
                lib.qb_silu_mul, (p(gate), p(up), p(act), b, act.shape[1], gate.stride(0), up.stride(0),
                                  native.threads(b * act.shape[1])),
                lambda rc: ValueError("native silu_mul rejected its arguments"), keep=(gate, up, act))))
            ops.append(("linear", bind["down"](act, pending)))
        ops.append(("norm", rms(self.norm, pending, x, x)))
        return x, pending, h, ops

    def _static(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step as a fixed list of calls (_plan), timed by kind when profiling."""
        import time

        b, t0 = tokens.shape[0], self.pos
        if b > self.batch or t0 + 1 > self.max_tokens:
            raise ValueError(f"qbench's decoder forward was set up for {self.batch} sequences of up to "
                             f"{self.max_tokens} tokens; got {b} x {t0 + 1}")
        if b not in self._plans:
            self._plans[b] = self._plan(b)
        x, _, h, ops = self._plans[b]
        clock, sec = time.perf_counter, self.seconds
        if sec is None:
            self._embed_into(tokens, x)
            for _, op in ops:
                op()
            logits = self._plain_head(h)
        else:
            s = clock()
            self._embed_into(tokens, x)
            sec["embedding"] += clock() - s
            for kind, op in ops:
                s = clock()
                op()
                sec[kind] += clock() - s
            s = clock()
            logits = self._plain_head(h)
            sec["linear"] += clock() - s
        self.pos = t0 + 1
        return logits

    def _embed_into(self, tokens: torch.Tensor, x: torch.Tensor) -> None:
        """x = the embeddings of tokens (B,): the rows of an nn.Embedding's weight gathered into x, another module's
        output copied."""
        if type(self.embed) is nn.Embedding:
            torch.index_select(self.embed.weight, 0, tokens, out=x)
        else:
            x.copy_(self.embed(tokens[:, None]).view(x.shape))

    def _plain_head(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head's logits for h (a new tensor: callers keep logits across steps)."""
        return (self._plain[1] if self._plain is not None else self.lm_head)(h)
