"""Forgetting Attention, the token mixer of the Forgetting Transformer (FoX; Lin, Nikishin, He, Courville,
"Forgetting Transformer: Softmax Attention with a Forget Gate", ICLR 2025).

Softmax attention whose logits are biased by a learned, data-dependent forget gate per head and step:
  f_t = sigmoid(w_f . x_t + b_f)                       [B, T, H], log f_t <= 0 in fp32
  o_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(K) + sum_{j < s <= i} log f_s) v_j
(layers.attention.forgetting_attention: exact, blockwise, memory linear in T). The paper's FoX needs no
positional embedding, so RoPE is off by default (rope_theta). Its "Pro" block adds, each an option here:
  output_gate  o <- o * sigmoid(W_o' x)                (the paper's Pro output gate)
  output_norm  per-head RMSNorm of o before the gate   (Pro; the official code's GroupRMSNorm, eps 1e-6)
  qk_norm      per-head RMSNorm of q and k             (Pro; one scale of head_dim shared by the heads, as
                                                         the official Pro checkpoints have it)
  kv_shift     k_t <- a_t k_{t-1} + (1 - a_t) k_t, a_t = sigmoid(w_a . x_t) per head, likewise v:
               a data-dependent shift of the projected keys / values by one token (Pro "KV-shift")
All four off is the paper's FoX (LLaMA) layer; all four on, FoX (Pro). The forget gate is a linear map with a
bias (zero at init; the official code's "full" gate); eps 1e-6 for the output norm (norm_eps) and 1e-5 for
the QK-norm, as the official code. forget_gate=False with RoPE on is
the paper's "Transformer (Pro)" baseline (the official code builds it the same way). Packed rows: a token
attends only within its document and the KV-shift reads zeros at a document start.

Decoding keeps a KV cache (layers.attention.kv_cache) plus, per slot and query head, the accumulated log
forget gate from that slot to the latest token ("decay" [B, S, H] fp32): each new token adds its log f to
every slot and starts its own slot at 0, so a step's logit bias is read off, never a difference of two
long cumulative sums (exact at any length). The KV-shift caches the last projected key and value.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers import sequence_parallel as sp
from layers.attention import kv_cache
from layers.attention.forgetting_attention import forgetting_attention
from layers.attention.rope import apply_rope
from layers.attention.sequence_parallel import METHODS, sequence_parallel_attention
from layers.context import LayerContext
from layers.core import Linear
from layers.forward_flops import causal_context
from layers.linear_attention.mixers.head_norm import HeadNorm
from layers.token_shift import token_shift

QK_NORM_EPS = 1e-5


class ForgettingAttention(nnx.Module):
  """FoX token mixer (causal). Options: output_gate, output_norm, qk_norm, kv_shift (the Pro block: all on),
  forget_gate (False: plain softmax attention), rope_theta (None: no RoPE, the paper's FoX), window
  (sliding window, None: full), norm_eps (output norm), block_size (the blockwise op's block: memory ~ T x
  block), sequence_parallel (under a "sequence" mesh axis: "all_gather" or "ring" of K/V and gates,
  layers.attention.sequence_parallel)."""

  def __init__(self, ctx: LayerContext, *, output_gate: bool = False, output_norm: bool = False,
               qk_norm: bool = False, kv_shift: bool = False, forget_gate: bool = True,
               rope_theta: float | None = None, window: int | None = None, norm_eps: float = 1e-6,
               block_size: int = 128, sequence_parallel: str = "all_gather", rngs: nnx.Rngs):
    if ctx.n_heads % ctx.n_kv_heads:
      raise ValueError(f"n_heads={ctx.n_heads} must be a multiple of n_kv_heads={ctx.n_kv_heads} (GQA)")
    if rope_theta is not None and ctx.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {ctx.head_dim}")
    if sequence_parallel not in METHODS:
      raise ValueError(f"sequence_parallel must be one of {METHODS}, got {sequence_parallel!r}")
    if window is not None and window < 1:
      raise ValueError(f"window must be >= 1 (the last W positions, itself included), got {window}")
    h, hkv, dk = ctx.n_heads, ctx.n_kv_heads, ctx.head_dim
    self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, dk
    self.rope_theta, self.window, self.block_size, self.dtype = rope_theta, window, block_size, ctx.dtype
    self.sequence_parallel = sequence_parallel

    def linear(d_out, axes, use_bias=False):
      return Linear(ctx.d_model, d_out, axes=axes, use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                    rngs=rngs)

    self.q = linear(h * dk, ("embed", "heads"))
    self.k = linear(hkv * dk, ("embed", "kv_heads"))
    self.v = linear(hkv * dk, ("embed", "kv_heads"))
    self.f = linear(h, ("embed", "heads"), use_bias=True) if forget_gate else None  # forget-gate logits
    self.o = Linear(h * dk, ctx.d_model, axes=("heads", "embed"), dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                    rngs=rngs)
    self.shift_gate = linear(2 * hkv, ("embed", "kv_heads")) if kv_shift else None  # (key, value) x Hkv
    kw = dict(param_dtype=ctx.param_dtype, rngs=rngs)
    self.q_norm = HeadNorm(dk, eps=QK_NORM_EPS, **kw) if qk_norm else None
    self.k_norm = HeadNorm(dk, eps=QK_NORM_EPS, **kw) if qk_norm else None
    self.out_norm = HeadNorm(dk, eps=norm_eps, gate_activation="sigmoid", **kw) if output_norm else None
    self.out_gate = linear(h * dk, ("embed", "heads")) if output_gate else None

  def _project(self, x: jax.Array, shift_cache: dict | None, segment_ids: jax.Array | None,
               positions: jax.Array) -> tuple:
    """q [B, T, H, K], k, v [B, T, Hkv, K], log f [B, T, H] fp32, and the new KV-shift cache (or None)."""
    b, t, _ = x.shape
    q, k, v = self.q(x), self.k(x), self.v(x)
    new_shift = None
    if self.shift_gate is not None:
      alpha = jax.nn.sigmoid(self.shift_gate(x).astype(jnp.float32)).reshape(b, t, 2, self.n_kv_heads, 1)
      new_shift = {}

      def shifted(name: str, z: jax.Array, a: jax.Array) -> jax.Array:  # a_t z_{t-1} + (1 - a_t) z_t per kv head
        prev, new_shift[name] = token_shift(z, None if shift_cache is None else shift_cache[name], segment_ids)
        z4, prev4 = (y.astype(jnp.float32).reshape(b, t, self.n_kv_heads, -1) for y in (z, prev))
        return (a * prev4 + (1.0 - a) * z4).reshape(b, t, -1).astype(z.dtype)

      k, v = shifted("k", k, alpha[:, :, 0]), shifted("v", v, alpha[:, :, 1])
    q = q.reshape(b, t, self.n_heads, self.head_dim)
    k = k.reshape(b, t, self.n_kv_heads, self.head_dim)
    v = v.reshape(b, t, self.n_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if self.rope_theta is not None:
      q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    log_f = (jnp.zeros((b, t, self.n_heads), jnp.float32) if self.f is None
             else jax.nn.log_sigmoid(self.f(x).astype(jnp.float32)))  # [B, T, H]
    return q, k, v, log_f, new_shift

  def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:  # o [B, T, H, K] -> [B, T, D]
    gate = None if self.out_gate is None else self.out_gate(x).reshape(o.shape)
    if self.out_norm is not None:
      o = self.out_norm(o, gate)
    elif gate is not None:
      o = (o.astype(jnp.float32) * jax.nn.sigmoid(gate.astype(jnp.float32))).astype(o.dtype)
    return self.o(o.reshape(*x.shape[:2], -1))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, x.shape[:2])
    q, k, v, log_f, _ = self._project(x, None, segment_ids, segments.forward_positions(x.shape[1], segment_ids,
                                                                                       positions))
    if sp.active_mesh() is not None:
      o = sequence_parallel_attention(q, k, v, window=self.window, segment_ids=segment_ids, forget_gates=log_f,
                                      method=self.sequence_parallel)
    else:
      o = forgetting_attention(q, k, v, log_f, window=self.window, segment_ids=segment_ids,
                               block_size=self.block_size)
    return self._out(o, x)

  def extra_flops_per_token(self, seq_len: int) -> float:
    """QK^T and AV over the causal (or windowed) context: 2 matmuls x 2 FLOPs per MAC."""
    return 4.0 * self.n_heads * self.head_dim * causal_context(seq_len, self.window)

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """{"kv": layers.attention.kv_cache, "decay": [B, S, H] fp32 accumulated log forget gate of each slot,
    "shift": {"k", "v": [B, 1, Hkv*K]} the last projected key / value (with kv_shift)}."""
    cache = {"kv": kv_cache.init_kv_cache(batch_size, max_len, self.n_kv_heads, self.head_dim, self.dtype),
             "decay": jnp.zeros((batch_size, max_len, self.n_heads), jnp.float32)}
    if self.shift_gate is not None:
      width = self.n_kv_heads * self.head_dim
      cache["shift"] = {name: jnp.zeros((batch_size, 1, width), self.dtype) for name in ("k", "v")}
    return cache

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x [B, T, D] at slots pos..pos+T-1, each token attending to the cached slots <= its own in its
    document (and window), logits biased by the accumulated log forget gates."""
    b, t, _ = x.shape
    d = segments.decode_documents(cache["kv"]["cursor"], t, segment_ids, positions)
    shift = None if "shift" not in cache else segments.restart(cache["shift"], d.reset)
    q, k, v, log_f, shift = self._project(x, shift, d.segment_ids, d.positions)
    kv, visible = kv_cache.append(cache["kv"], k, v, pos, d, self.window)  # visible [B, 1, T, S]
    csum = jnp.cumsum(log_f, axis=1)  # [B, T, H] within this call
    total = csum[:, -1:]  # [B, 1, H]
    # Old slots gain this call's gates; slot pos + t starts at the gates after token t.
    decay = jax.lax.dynamic_update_slice_in_dim(cache["decay"] + total, total - csum, pos, axis=1)  # [B, S, H]
    bias = decay[:, None] - (total - csum)[:, :, None]  # [B, T, S, H]: sum of log f over (slot, token t]
    g = self.n_heads // self.n_kv_heads
    qg = q.astype(jnp.float32).reshape(b, t, self.n_kv_heads, g, self.head_dim)
    scores = jnp.einsum("btngk,bsnk->btsng", qg, kv["k"].astype(jnp.float32)) * self.head_dim**-0.5
    scores = scores + bias.reshape(*bias.shape[:3], self.n_kv_heads, g)
    scores = jnp.where(visible[:, 0, :, :, None, None], scores, -jnp.inf)
    o = jnp.einsum("btsng,bsnk->btngk", jax.nn.softmax(scores, axis=2), kv["v"].astype(jnp.float32))
    new = {"kv": kv, "decay": decay, **({} if shift is None else {"shift": shift})}
    return self._out(o.reshape(b, t, self.n_heads, self.head_dim).astype(q.dtype), x), new
