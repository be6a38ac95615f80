"""Mixture of experts: routing, dispatch, aux losses, MoE and SMEAR layers (single device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.moe import dispatch, losses
from layers.moe.experts import grouped_apply
from layers.moe.routing import expert_choice_route, select_top_k, top_k_route

CTX = LayerContext(d_model=8, d_ff=16)
E, K = 4, 2


def _x(seed=0, shape=(2, 6, 8)):
  return jax.random.normal(jax.random.key(seed), shape)


def _all_experts(layer, x2):
  """Every expert on every token: [E, N, D]."""
  return grouped_apply(*layer.experts.split(), jnp.broadcast_to(x2, (layer.n_experts, *x2.shape)))


def _build(**options):
  return registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), **{"n_experts": E, "top_k": K, **options})


def test_top_k_route_hand_made():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.0]])
  r = top_k_route(logits, 2)
  p = np.exp(np.array(logits)) / np.exp(np.array(logits)).sum(-1, keepdims=True)
  np.testing.assert_array_equal(r.experts, [[0, 1], [1, 2]])
  np.testing.assert_allclose(r.weights, [[p[0, 0], p[0, 1]], [p[1, 1], p[1, 2]]], rtol=1e-6)
  renorm = top_k_route(logits, 2, renormalize=True).weights
  np.testing.assert_allclose(renorm[0], p[0, :2] / p[0, :2].sum(), rtol=1e-6)
  sig = top_k_route(logits, 2, score="sigmoid")
  np.testing.assert_allclose(sig.weights, jax.nn.sigmoid(jnp.array([[2.0, 1.0], [3.0, 1.0]])), rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(sig.probs, -1), 1.0, rtol=1e-6)


def test_select_top_k_is_lax_top_k_and_stays_on_its_token_shards():
  """Values and indices equal lax.top_k's (ties to the lower index, -inf rows with k above the finite count);
  with tokens split over a sequence axis it compiles without the all-gather lax.top_k gets."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from train import mesh as mesh_lib

  x = jnp.asarray(np.random.default_rng(0).integers(0, 4, (6, 12, 8)).astype(np.float32))  # many ties
  x = x.at[0, :, 2:].set(-jnp.inf)
  for k in (1, 3, 8):
    for got, want in zip(select_top_k(x, k), jax.lax.top_k(x, k)):
      np.testing.assert_array_equal(got, want)
  mesh = mesh_lib.make_mesh(dict(data=2, sequence=4))
  sharded = jax.device_put(x[:4], NamedSharding(mesh, P("data", "sequence")))
  for fn, gathers in ((select_top_k, False), (jax.lax.top_k, True)):
    with jax.set_mesh(mesh):
      hlo = jax.jit(fn, static_argnums=1).lower(sharded, 2).compile().as_text()
    assert ("all-gather" in hlo) == gathers, fn


def test_expert_choice_route_hand_made():
  logits = jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]))
  r = expert_choice_route(logits, 2)
  np.testing.assert_array_equal(r.tokens, [[0, 2], [1, 2]])
  np.testing.assert_allclose(r.weights, [[0.7, 0.6], [0.8, 0.4]], rtol=1e-6)


def test_capacity_slots_priority_and_dropping():
  experts = jnp.array([[0, 1], [0, 2], [0, 1]])
  slots = dispatch.capacity_slots(experts, 3, capacity=2)
  # first choices take slots before second choices: token 2's first choice (expert 0) overflows
  np.testing.assert_array_equal(slots.position, [[0, 0], [1, 0], [2, 1]])
  np.testing.assert_array_equal(slots.kept, [[True, True], [True, True], [False, True]])


def test_sort_by_expert_groups():
  g = dispatch.sort_by_expert(jnp.array([[2, 0], [0, 1]]), 4)
  np.testing.assert_array_equal(g.group_sizes, [2, 1, 1, 0])
  np.testing.assert_array_equal(g.expert_of_row, [0, 0, 1, 2])
  np.testing.assert_array_equal(g.order, [1, 2, 3, 0])


def test_tile_layout_pads_groups_to_tiles():
  g = dispatch.sort_by_expert(jnp.array([[2, 0], [0, 1], [0, 2]]), 4)  # sizes [3, 1, 2, 0]
  tiles = dispatch.tile_layout(g, 2)
  np.testing.assert_array_equal(tiles.destination, [0, 1, 2, 4, 6, 7])
  np.testing.assert_array_equal(tiles.tile_expert[:4], [0, 0, 1, 2])
  x = jnp.arange(6.0)[:, None]
  w = jnp.arange(1.0, 5.0)[:, None, None]  # expert e multiplies by e + 1
  y = dispatch.from_tiles(dispatch.tiled_matmul(dispatch.to_tiles(x, tiles), w, tiles), tiles)
  np.testing.assert_allclose(y[:, 0], np.arange(6.0) * (np.asarray(g.expert_of_row) + 1))


def test_loss_values_hand_computed():
  logits = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  experts = np.array([[0], [1], [2], [0]])
  f = np.array([2, 1, 1]) / 4
  np.testing.assert_allclose(losses.expert_load(jnp.array(experts), 3), f)
  np.testing.assert_allclose(losses.load_balancing_loss(jnp.array(f), jnp.array(p)),
                             3 * np.sum(f * p.mean(0)), rtol=1e-6)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(losses.router_z_loss(jnp.array(logits)), np.mean(lse**2), rtol=1e-6)
  entropy = np.mean(-(p * np.log(p)).sum(-1))
  np.testing.assert_allclose(losses.router_entropy(jnp.array(p)), entropy, rtol=1e-6)
  uniform = jnp.full((5, 3), 1 / 3)
  np.testing.assert_allclose(losses.load_balancing_loss(jnp.full((3,), 1 / 3), uniform), 1.0, rtol=1e-6)


def _reference(layer, x2, weights, experts, kept):
  all_out = np.asarray(_all_experts(layer, x2))  # [E, N, D]
  n = np.arange(x2.shape[0])[:, None]
  w = np.where(kept, weights, 0.0)
  return np.einsum("nk,nkd->nd", w, all_out[np.asarray(experts), n])


@pytest.mark.parametrize("expert_ffn, options", [("swiglu", None), ("mlp", {"activation": "polynorm"})])
def test_dropless_matches_capacity_and_reference(expert_ffn, options):
  x = _x()
  x2 = x.reshape(-1, 8)
  dropless = _build(expert_ffn=expert_ffn, expert_options=options, grouped_matmul="tiled", tile_size=4)
  ragged = _build(expert_ffn=expert_ffn, expert_options=options, grouped_matmul="ragged_dot")
  capacity = _build(expert_ffn=expert_ffn, expert_options=options, dispatch="capacity", capacity_factor=E / K)
  for layer in (dropless, ragged, capacity) if options else ():  # distinct activation coefficients per expert
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(layer.experts.ffn.act, nnx.Param))):
      var[...] = jax.random.normal(jax.random.key(i), var.shape)
  y_dl = dropless(x)
  y_cap, _, metrics = nnx.capture(capacity, AuxLoss, LayerMetric)(x)
  assert y_dl.shape == x.shape
  np.testing.assert_allclose(y_dl, y_cap, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ragged(x), y_cap, rtol=1e-5, atol=1e-6)
  assert float(metrics["moe_dropped_fraction/0"][0]) == 0.0
  r = top_k_route(dropless.router(x2), K)
  ref = _reference(dropless, x2, r.weights, r.experts, np.ones(r.experts.shape, bool))
  np.testing.assert_allclose(y_dl.reshape(-1, 8), ref, rtol=1e-5, atol=1e-6)


def test_dropless_and_capacity_gradients_agree():
  x = _x(1)

  def grads(layer):
    def loss(m, x):
      return jnp.sum(jnp.sin(m(x)))

    return nnx.grad(loss, argnums=(0, 1))(layer, x)

  g_dl = grads(_build(grouped_matmul="tiled", tile_size=4))
  g_cap = grads(_build(dispatch="capacity", capacity_factor=E / K))
  for a, b in zip(jax.tree.leaves(g_dl), jax.tree.leaves(g_cap)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(g_dl[0].router.kernel[...]))) > 0


def test_small_capacity_drops_counted_and_zeroed():
  x = _x(2)
  x2 = x.reshape(-1, 8)
  layer = _build(dispatch="capacity", capacity_factor=0.5)
  y, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  n = x2.shape[0]
  cap = dispatch.capacity(n, E, K, 0.5)
  r = top_k_route(layer.router(x2), K)
  experts = np.asarray(r.experts)
  used, kept = np.zeros(E, int), np.zeros(experts.shape, bool)
  for j in range(K):  # priority: choice rank, then token order
    for t in range(n):
      kept[t, j] = used[experts[t, j]] < cap
      used[experts[t, j]] += 1
  assert 0 < kept.sum() < kept.size
  np.testing.assert_allclose(metrics["moe_dropped_fraction/0"][0], 1 - kept.mean(), rtol=1e-6)
  np.testing.assert_allclose(y.reshape(-1, 8), _reference(layer, x2, r.weights, r.experts, kept),
                             rtol=1e-5, atol=1e-6)


def test_aux_losses_sown_with_weights():
  x = _x(3)
  x2 = np.asarray(x.reshape(-1, 8))
  layer = _build(load_balance_weight=0.5, z_loss_weight=0.25)
  _, aux, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  logits = x2 @ np.asarray(layer.router.kernel[...])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  top = np.argsort(-p, axis=-1)[:, :K]
  f = np.bincount(top.reshape(-1), minlength=E) / top.size
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(aux["moe_load_balance"][0], 0.5 * E * np.sum(f * p.mean(0)), rtol=1e-5)
  np.testing.assert_allclose(aux["moe_z_loss"][0], 0.25 * np.mean(lse**2), rtol=1e-5)
  np.testing.assert_allclose(metrics["moe_expert_load/0"][0], f, rtol=1e-6)
  np.testing.assert_allclose(metrics["moe_router_entropy"][0], np.mean(-(p * np.log(p)).sum(-1)), rtol=1e-5)


def test_expert_choice_matches_reference():
  x = _x(4)
  x2 = x.reshape(-1, 8)
  layer = _build(routing="expert_choice", capacity_factor=1.0)
  y, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  r = expert_choice_route(layer.router(x2), dispatch.capacity(x2.shape[0], E, K, 1.0))
  all_out = np.asarray(_all_experts(layer, x2))
  ref = np.zeros(x2.shape, np.float32)
  for e in range(E):
    for c, t in enumerate(np.asarray(r.tokens[e])):
      ref[t] += float(r.weights[e, c]) * all_out[e, t]
  np.testing.assert_allclose(y.reshape(-1, 8), ref, rtol=1e-5, atol=1e-6)
  missed = 1 - len(np.unique(np.asarray(r.tokens))) / x2.shape[0]
  np.testing.assert_allclose(metrics["moe_dropped_fraction/0"][0], missed, rtol=1e-6)


def test_shared_experts_add_dense_ffn():
  x = _x(5)
  layer = _build(n_shared=1)
  assert layer.experts.ffn.up.kernel.shape == (E, 8, 16 // 3)  # d_ff // (top_k + n_shared)
  plain = _build(n_shared=1)
  plain.shared = None
  np.testing.assert_allclose(layer(x), plain(x) + layer.shared(x), rtol=1e-5, atol=1e-6)


def test_random_router_is_fixed_and_parameter_free():
  layer = _build(router="random", seed=3)
  assert layer.router.kernel is None
  logits = layer.router(_x().reshape(-1, 8))
  again = _build(router="random", seed=3).router(_x().reshape(-1, 8))
  np.testing.assert_array_equal(logits, again)
  assert not np.allclose(logits, _build(router="random", seed=4).router(_x().reshape(-1, 8)))


def test_jitter_only_in_training():
  layer = _build(jitter=0.5)
  x2 = _x().reshape(-1, 8)
  assert not np.allclose(layer.router(x2), layer.router(x2))
  layer.eval()
  np.testing.assert_array_equal(layer.router(x2), layer.router(x2))


def test_param_axes_and_bf16_compute():
  ctx = LayerContext(d_model=8, d_ff=16, dtype=jnp.bfloat16)
  layer = registry.build("ffn", "moe", ctx, rngs=nnx.Rngs(0), n_experts=E, n_shared=1)
  for path, var in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
    axes = var.get_metadata()["axes"]
    assert len(axes) == var[...].ndim, path
    assert var[...].dtype == jnp.float32
    if path[0] == "experts":
      assert axes[0] == "expert"
  assert layer(_x().astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_bad_options_fail_early():
  with pytest.raises(ValueError, match="no option"):
    registry.check_options("ffn", "moe", {"n_expert": 4})
  with pytest.raises(ValueError, match="dispatch"):
    _build(dispatch="sorted")


@pytest.mark.parametrize("granularity, expert_ffn", [("token", "swiglu"), ("sequence", "mlp")])
def test_smear_one_hot_router_equals_that_expert(granularity, expert_ffn):
  layer = registry.build("ffn", "smear", CTX, rngs=nnx.Rngs(0), n_experts=3, expert_ffn=expert_ffn,
                         granularity=granularity)
  e = 1
  layer.router.kernel[...] = jnp.zeros((8, 3)).at[:, e].set(100.0)
  x = jnp.abs(_x()) + 0.5  # positive inputs: logits of expert e are >= 400 above the others
  graphdef, params, rest = layer.experts.split()
  only_e = nnx.merge(graphdef, jax.tree.map(lambda p: p[e], params), rest)
  np.testing.assert_allclose(layer(x), only_e(x), rtol=1e-5, atol=1e-6)


def test_smear_token_merge_equals_merged_params():
  layer = registry.build("ffn", "smear", CTX, rngs=nnx.Rngs(1), n_experts=3)
  x2 = _x(6, (5, 8))
  probs = jax.nn.softmax(layer.router(x2), axis=-1)
  graphdef, params, rest = layer.experts.split()
  per_token = []
  for n in range(5):
    merged = jax.tree.map(lambda p, w=probs[n]: jnp.einsum("e,e...->...", w, p), params)
    per_token.append(nnx.merge(graphdef, merged, rest)(x2[n]))
  np.testing.assert_allclose(layer(x2), jnp.stack(per_token), rtol=1e-5, atol=1e-6)
