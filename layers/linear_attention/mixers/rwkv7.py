"""RWKV-7 time mixing (Peng et al., "RWKV-7 "Goose" with Expressive Dynamic State Evolution", 2025).

State transition diagonal plus rank one (the paper's generalised delta rule), here with the state K x V:
  S_t = (diag(w_t) - kappa_t (a_t * kappa_t)^T) S_{t-1} + k~_t v_t^T,   o_t = S_t^T r_t
which is layers.linear_attention.dplr_delta_rule with its a = -kappa, b = kappa * a_t, gk = log w_t and
scale 1 (the paper does not scale r). Per token, from x and the previous token x' of the same document
(token shift; zeros at a document start):
  x_c   = x + (x' - x) * mu_c   for c in r, w, k, v, a, g     (lerp with learned mu_c; no data dependence)
  r, k, v = W_r x_r, W_k x_k, W_v x_v
  w     = exp(-e^-0.5 sigmoid(d)),  d = w0 + tanh(x_w A_w) B_w    decay in (0.545, 1), log w >= -0.6065
  v     = lerp(v, v_first, sigmoid(v0 + x_v A_v B_v))  value residual: every layer but the first mixes in the
                                                         first layer's value (see `value_residual` below)
  a     = sigmoid(a0 + x_a A_a B_a)                      in-context learning rate, per channel
  g     = sigmoid(x_g A_g) B_g                           output gate
  kappa = L2Norm(k * xi) per head                        removal key (xi = k_k)
  k~    = k * (1 + (a - 1) * alpha)                      replacement key (alpha = k_a)
  y     = W_o((GroupNorm(o) + (r . (rho * k~)) v) * g)   per-head LayerNorm (eps 64e-5) plus the bonus term
The LoRA widths (A: D -> d, B: d -> C) default to the official code's rule max(32, 32 round(f sqrt(C) / 32))
with f = 2.5 (decay, a), 1.7 (value residual), 5 (gate) (the reference library multiplies the decay, a and
value widths by head_dim / 64; equal at the paper's head size 64). GroupNorm eps 64e-5 as the official
code (the reference library: head_dim x 1e-5, the same at 64). Initialisation
follows the official RWKV-LM x070 training code (the layer-depth schedules of mu, w0, a0, v0, k_k, k_a,
rho, the GroupNorm scale ((l + 1) / L)^0.7; W_r, W_v orthogonal, W_k orthogonal x 0.1, W_o zero, LoRA
A zero, B orthogonal x 0.1); the reference PyTorch library's rwkv7 layer initialises the same way.
Not modelled here: the official trainer's 2x learning rate on w0 and its L2Wrap logit penalty.

Value residual within a block-pattern LM (layers know nothing of the model): the LM hands every mixer whose
__call__ / decode take a `layer_values` keyword one dict per forward (or decode) call, in layer order
(layers/registry.py). An RWKV-7 layer without a value residual (the first one) publishes its v as
layer_values["v_first"] ([B, T, C], the tokens of this call); a later one reads it. `value_residual`
None (default) means "every layer but the model's first" (ctx.layer_idx > 0), as in the paper; in a
hybrid whose first RWKV-7 layer is not layer 0, give that layer value_residual=False (a label in
model.options). Called on its own (no layer_values), a layer with a value residual raises.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import Linear, make_param
from layers.linear_attention.mixers.recurrent_mixer import Cache, Documents, RecurrentMixer, l2_normalize, split_heads
from layers.linear_attention.ops import dplr_delta_rule
from layers.norms import layer_norm
from layers.token_shift import TokenShift

MIX_NAMES = ("r", "w", "k", "v", "a", "g")  # the six token-shift interpolations, rows of `mu`
LOG_DECAY_FLOOR = -math.exp(-0.5)  # log w = LOG_DECAY_FLOOR * sigmoid(d)


def lora_dim(factor: float, channels: int) -> int:
  """The official code's LoRA width rule: max(32, 32 * round(factor * sqrt(C) / 32))."""
  return max(32, round(factor * channels**0.5 / 32) * 32)


def depth_ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
  """(layer / (L - 1): 0 -> 1, 1 - layer / L: 1 -> ~0), the official init's depth schedules."""
  return layer_idx / max(n_layers - 1, 1), 1.0 - layer_idx / n_layers


def _constant(value):
  def init(key, shape, dtype):
    del key
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), shape).astype(dtype)

  return init


class RWKV7(RecurrentMixer):
  """RWKV-7 time mixing. Options: the LoRA widths (0: the official rule), value_residual (None: every layer
  but the first), norm_eps, mode, chunk_size."""

  conv_names = ("shift",)
  recurrence = "delta"

  def __init__(self, ctx: LayerContext, *, decay_low_rank_dim: int = 0, a_low_rank_dim: int = 0,
               v_low_rank_dim: int = 0, gate_low_rank_dim: int = 0, value_residual: bool | None = None,
               norm_eps: float = 64e-5, mode: str = "chunk", chunk_size: int = 64, rngs: nnx.Rngs):
    d, h, dk = ctx.d_model, ctx.n_heads, ctx.head_dim
    c = h * dk
    early, late = depth_ratios(ctx.layer_idx, ctx.n_layers)
    # Official init schedules over the channel index n (ddd = n / D; linear, zigzag over C and each head).
    ddd = jnp.arange(d, dtype=jnp.float32) / d
    n = jnp.arange(c, dtype=jnp.float32)
    linear = n / (c - 1) - 0.5
    zigzag = ((n % dk) - (dk - 1) / 2) / ((dk - 1) / 2)
    zigzag = zigzag * jnp.abs(zigzag)
    decay_speed = -6 + 6 * (n / (c - 1)) ** (1 + early**0.3)
    mu = jnp.stack([1.0 - ddd ** (p * late) for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)])  # rows: MIX_NAMES

    def param(value, shape, axes):
      return make_param(_constant(value), rngs.params(), shape, ctx.param_dtype, axes, optim_group="no_decay")

    def linear_layer(d_in, d_out, axes, init):
      return Linear(d_in, d_out, axes=axes, kernel_init=init, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                    rngs=rngs)

    def lora(rank):  # (A: zeros, B: orthogonal x 0.1)
      return (linear_layer(d, rank, ("embed", None), nnx.initializers.zeros),
              linear_layer(rank, c, (None, "heads"), jax.nn.initializers.orthogonal(0.1)))

    self.shift = TokenShift(d, dtype=ctx.dtype)
    self.mu = param(mu, (len(MIX_NAMES), d), (None, "embed"))
    self.r_proj = linear_layer(d, c, ("embed", "heads"), jax.nn.initializers.orthogonal(1.0))
    self.k_proj = linear_layer(d, c, ("embed", "heads"), jax.nn.initializers.orthogonal(0.1))
    self.v_proj = linear_layer(d, c, ("embed", "heads"), jax.nn.initializers.orthogonal(1.0))
    self.o_proj = linear_layer(c, d, ("heads", "embed"), nnx.initializers.zeros)
    self.w_down, self.w_up = lora(decay_low_rank_dim or lora_dim(2.5, c))
    self.w0 = param(decay_speed + 0.5 + 2.5 * zigzag, (c,), ("heads",))
    self.a_down, self.a_up = lora(a_low_rank_dim or lora_dim(2.5, c))
    self.a0 = param(-0.19 + 0.3 * zigzag + 0.4 * linear, (c,), ("heads",))
    if value_residual is None:
      value_residual = ctx.layer_idx > 0
    self.value_residual = value_residual
    if value_residual:
      self.v_down, self.v_up = lora(v_low_rank_dim or lora_dim(1.7, c))
      self.v0 = param(0.73 - 0.4 * linear, (c,), ("heads",))
    self.g_down, self.g_up = lora(gate_low_rank_dim or lora_dim(5.0, c))
    self.k_k = param(0.71 - 0.1 * linear, (c,), ("heads",))
    self.k_a = param(1.02, (c,), ("heads",))
    self.r_k = param(-0.04, (h, dk), ("heads", None))
    self.norm_scale = param(((ctx.layer_idx + 1) / ctx.n_layers) ** 0.7, (h, dk), ("heads", None))
    self.norm_bias = param(0.0, (h, dk), ("heads", None))
    self.norm_eps = norm_eps
    self.n_heads, self.state_k, self.state_v = h, dk, dk
    self.mode, self.chunk_size = mode, chunk_size

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               layer_values: dict | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    """layer_values: the LM's dict of values shared across layers (see the module docstring)."""
    return super().__call__(x, segment_ids=segment_ids, positions=positions, layer_values=layer_values)

  def decode(self, x: jax.Array, cache: Cache, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None, layer_values: dict | None = None) -> tuple[jax.Array, Cache]:
    return super().decode(x, cache, pos, segment_ids=segment_ids, positions=positions, layer_values=layer_values)

  def mix(self, x: jax.Array, cache: Cache | None, mode: str, docs: Documents,
          layer_values: dict | None = None) -> tuple[jax.Array, Cache | None]:
    convs = {}
    prev = self._conv("shift", x, cache, convs, docs.segment_ids)  # [B, T, D]: the previous token
    mu = self.mu[...].astype(x.dtype)
    xr, xw, xk, xv, xa, xg = (x + (prev - x) * mu[i] for i in range(len(MIX_NAMES)))
    f32 = jnp.float32
    r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)  # [B, T, C]
    d = self.w0[...].astype(f32) + self.w_up(jnp.tanh(self.w_down(xw))).astype(f32)
    log_w = LOG_DECAY_FLOOR * jax.nn.sigmoid(d)  # [B, T, C] fp32 in (-0.6065, 0)
    v = self._value_residual(v, xv, layer_values)
    a = jax.nn.sigmoid(self.a0[...].astype(f32) + self.a_up(self.a_down(xa)).astype(f32))  # [B, T, C] fp32
    g = self.g_up(jax.nn.sigmoid(self.g_down(xg)))
    h = self.n_heads
    kappa = l2_normalize(split_heads(k.astype(f32) * self.k_k[...].astype(f32), h))  # [B, T, H, K]
    k = k.astype(f32) * (1.0 + (a - 1.0) * self.k_a[...].astype(f32))  # replacement key k~
    r, k, v, a, log_w = (split_heads(z, h) for z in (r, k, v, a, log_w))
    o, state = self._recur(dplr_delta_rule, r, k, v, -kappa, kappa * a, log_w, cache=cache, mode=mode,
                           segment_ids=docs.segment_ids, scale=1.0)
    o = layer_norm(o.astype(f32), self.norm_scale[...], self.norm_bias[...], self.norm_eps)  # [B, T, H, V]
    bonus = jnp.sum(r.astype(f32) * k * self.r_k[...].astype(f32), axis=-1, keepdims=True) * v.astype(f32)
    y = ((o + bonus).reshape(*x.shape[:-1], -1) * g.astype(f32)).astype(x.dtype)
    return self.o_proj(y), self._new_cache(cache, state, convs)

  def _value_residual(self, v: jax.Array, xv: jax.Array, layer_values: dict | None) -> jax.Array:
    """The first layer publishes v as layer_values["v_first"]; later ones interpolate towards it."""
    if not self.value_residual:
      if layer_values is not None:
        layer_values.setdefault("v_first", v)
      return v
    if layer_values is None or "v_first" not in layer_values:
      raise ValueError("this rwkv7 layer mixes in the first layer's values (value_residual) but no earlier layer "
                       "published them: run it inside models.lm.LM after an rwkv7 layer with value_residual=False "
                       "(the model's first one by default), or set value_residual=False on it")
    v_first = layer_values["v_first"]
    if v_first.shape != v.shape:
      raise ValueError(f"layer_values['v_first'] has shape {v_first.shape} but this rwkv7 layer's values are "
                       f"{v.shape}: the first layer's values must be of the same tokens, and every rwkv7 layer of "
                       "a model needs the same n_heads x head_dim")
    nu = jax.nn.sigmoid(self.v0[...].astype(jnp.float32) + self.v_up(self.v_down(xv)).astype(jnp.float32))
    return (v + (v_first.astype(jnp.float32) - v) * nu).astype(v.dtype)
