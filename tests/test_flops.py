"""Analytic FLOPs: every registered mixer and feed-forward reports a count, and the counts of the
structured layers (MoE, rational, linear-attention chunk forms) follow from their definitions."""

import math

import jax
import pytest
from flax import nnx

from layers import registry
from layers.context import LayerContext
from layers.forward_flops import causal_context, forward_flops_per_token
from layers.linear_attention.ops.cost import recurrence_flops_per_token

CTX = LayerContext(d_model=32, n_heads=2, n_kv_heads=2, d_ff=64)
T = 64


def _flops(kind, name, ctx=CTX, **options):
  layer = nnx.eval_shape(lambda: registry.build(kind, name, ctx, rngs=nnx.Rngs(0), **options))
  return forward_flops_per_token(layer, T)


@pytest.mark.parametrize("kind,name", [("mixer", n) for n in registry.names("mixer")]
                         + [("ffn", n) for n in registry.names("ffn")])
def test_every_registered_layer_has_a_positive_flop_count(kind, name):
  flops = _flops(kind, name)
  assert math.isfinite(flops) and flops > 0


def test_attention_counts_projections_and_causal_scores():
  d, h = CTX.d_model, CTX.n_heads * CTX.head_dim
  want = 2 * (d * h * 3 + h * d) + 4 * h * causal_context(T)
  assert _flops("mixer", "attention") == pytest.approx(want)
  windowed = 2 * (d * h * 3 + h * d) + 4 * h * causal_context(T, 8)
  assert _flops("mixer", "attention", window=8) == pytest.approx(windowed)
  assert causal_context(4, 2) == pytest.approx((1 + 2 + 2 + 2) / 4)


def test_moe_counts_only_active_experts():
  dense = _flops("ffn", "swiglu")
  router = 2 * CTX.d_model * 8
  moe = _flops("ffn", "moe", n_experts=8, top_k=2)  # experts of width d_ff / 2: same active params
  assert moe == pytest.approx(dense + router)
  shared = _flops("ffn", "moe", n_experts=8, top_k=2, n_shared=1)  # width d_ff / 3 each, 3 active
  assert shared == pytest.approx(3 * 2 * 3 * CTX.d_model * (CTX.d_ff // 3) + router)


def test_moe_active_parameters():
  from layers.forward_flops import active_params

  def params(name, **options):
    return active_params(nnx.eval_shape(lambda: registry.build("ffn", name, CTX, rngs=nnx.Rngs(0), **options)))

  dense = params("swiglu")
  assert dense == 3 * CTX.d_model * CTX.d_ff
  assert params("moe", n_experts=8, top_k=2) == pytest.approx(dense + CTX.d_model * 8)


def test_rational_activation_adds_its_horner_work():
  mlp_gelu = _flops("ffn", "mlp", activation="gelu")
  mlp_rational = _flops("ffn", "mlp", activation="rational")
  assert mlp_rational - mlp_gelu == pytest.approx(CTX.d_ff * (2 * (5 + 4) + 3))


def test_linear_attention_chunk_costs():
  assert recurrence_flops_per_token("linear", 64, 16, 16) == 2 * 64 * 32 + 4 * 256
  assert recurrence_flops_per_token("delta", 64, 16, 16) > recurrence_flops_per_token("linear", 64, 16, 16)
  # linear 5120 + scores q.b, a.k, a.b and W 8CK + three C x V products 6CV + solve C^2 + W S, b^T U 4KV
  assert recurrence_flops_per_token("dplr", 64, 16, 16) == 5120 + 8 * 64 * 16 + 6 * 64 * 16 + 64 * 64 + 4 * 256
  with pytest.raises(ValueError, match="recurrence kind"):
    recurrence_flops_per_token("mamba", 64, 16, 16)
  gla, gdn = _flops("mixer", "gla"), _flops("mixer", "gated_delta_net")
  assert gla > 0 and gdn > gla  # delta rule: WY transform on top


def test_linear_attention_analytic_count_is_close_to_xla():
  """The chunk-form model vs XLA's count of a forward pass (masked work XLA does is not halved)."""
  ctx = LayerContext(d_model=64, n_heads=2, n_kv_heads=2, d_ff=128)

  def apply(layer, x):
    return layer(x)

  for name in ("gla", "gated_delta_net"):
    layer = registry.build("mixer", name, ctx, rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((1, 256, 64), jax.numpy.float32)
    xla = nnx.jit(apply).lower(layer, x).compile().cost_analysis()["flops"]
    analytic = forward_flops_per_token(layer, 256) * 256
    assert 0.5 < analytic / xla < 2.0, (name, analytic, xla)
