"""DeepSeek-V3 routing in the MoE layer: group-limited top-k, routed scaling, sigmoid-gated shared expert,
sequence-wise balance loss, and the auxiliary-loss-free bias (counted in training forwards only, committed
once per optimizer step so gradient accumulation equals one big batch, checkpointed with the train state)."""

import doctest
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from layers import registry
from layers.aux import AuxLoss, LayerMetric, end_step
from layers.context import LayerContext
from layers.moe import balance, expert_parallel, losses, routing
from layers.moe.routing import top_k_route
from models.lm import generate
from tests.foundation_configs import tiny_lm
from train import checkpoint
from train import mesh as mesh_lib
from train.data import pipeline
from train.loop import build_program, global_batch
from train.step import forward

CTX = LayerContext(d_model=8, d_ff=16)


def _x(seed=0, shape=(2, 6, 8)):
  return jax.random.normal(jax.random.key(seed), shape)


def _build(**options):
  return registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), **{"n_experts": 8, "top_k": 2, **options})


@pytest.mark.parametrize("module", [routing, balance, losses, expert_parallel])
def test_docstring_examples_run(module):
  result = doctest.testmod(module)
  assert result.attempted > 0 and result.failed == 0


def _route_reference(scores, bias, k, n_groups, top_groups):
  """Per token, in numpy: groups by the sum of their two best biased scores, then top-k inside them."""
  experts = []
  for s in np.asarray(scores + bias):
    groups = s.reshape(n_groups, -1)
    group_score = np.sort(groups, axis=1)[:, -2:].sum(1)
    allowed = np.zeros_like(groups, bool)
    allowed[np.argsort(-group_score, kind="stable")[:top_groups]] = True
    experts.append(np.argsort(-np.where(allowed.reshape(-1), s, -np.inf), kind="stable")[:k])
  return np.array(experts)


def test_group_limited_top_k_with_bias_and_scaling():
  logits = jax.random.normal(jax.random.key(1), (32, 8)) * 2
  bias = jnp.array([0.0, 0.3, -0.2, 0.0, 0.1, 0.0, -0.4, 0.2])
  r = top_k_route(logits, 3, score="sigmoid", renormalize=True, bias=bias, n_groups=4, top_groups=2, scale=2.5)
  want = _route_reference(jax.nn.sigmoid(logits), bias, 3, 4, 2)
  np.testing.assert_array_equal(np.sort(r.experts, 1), np.sort(want, 1))
  s = np.asarray(jax.nn.sigmoid(logits))
  chosen = np.take_along_axis(s, np.asarray(r.experts), 1)  # gates from the unbiased scores
  np.testing.assert_allclose(r.weights, 2.5 * chosen / chosen.sum(1, keepdims=True), rtol=1e-6)
  plain = top_k_route(logits, 3, score="sigmoid")
  assert not np.array_equal(np.sort(plain.experts, 1), np.sort(r.experts, 1))  # groups and bias changed choices


def test_sequence_balance_loss_hand_computed():
  logits = np.asarray(jax.random.normal(jax.random.key(2), (3, 5, 4)))
  s = 1 / (1 + np.exp(-logits))
  p = s / s.sum(-1, keepdims=True)
  experts = np.argsort(-s, -1)[..., :2]
  want = np.mean([4 * np.sum(np.bincount(experts[b].reshape(-1), minlength=4) / 10 * p[b].mean(0)) for b in range(3)])
  np.testing.assert_allclose(losses.sequence_balance_loss(jnp.array(experts), jnp.array(p)), want, rtol=1e-6)
  layer = _build(n_experts=4, score="sigmoid", seq_balance_weight=0.5, load_balance_weight=0.0)
  layer.router.kernel[...] = jnp.eye(8, 4)  # logits = the first 4 channels of x
  x = jnp.zeros((3, 5, 8)).at[..., :4].set(logits)
  _, aux, _ = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  np.testing.assert_allclose(aux["moe_seq_balance"][0], 0.5 * want, rtol=1e-5)
  assert "moe_load_balance" not in aux


def test_routed_scale_and_sigmoid_gated_shared_expert():
  x = _x(3)
  x2 = x.reshape(-1, 8)
  plain = _build(n_shared=1)
  gated = _build(n_shared=1, shared_gate=True, routed_scale=2.5)
  nnx.update(gated, nnx.state(plain, nnx.Param))  # same router, experts and shared expert
  plain.shared = None
  gate = jax.nn.sigmoid(x2 @ gated.shared_gate[...])
  want = 2.5 * plain(x).reshape(-1, 8) + gate * gated.shared(x2)
  np.testing.assert_allclose(gated(x).reshape(-1, 8), want, rtol=1e-5, atol=1e-6)
  assert gated.active_params() == pytest.approx(_build(n_shared=1).active_params() + 8)


def test_bias_counts_in_training_forwards_and_moves_once_per_step():
  layer = _build(score="sigmoid", bias_update_rate=0.1)
  x = _x(4)
  r = top_k_route(layer.router(x.reshape(-1, 8)), 2, score="sigmoid")
  counts = np.bincount(np.asarray(r.experts).reshape(-1), minlength=8)
  _, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  layer(x)
  np.testing.assert_array_equal(layer.balance.load[...], 2 * counts)  # two forwards, bias still 0
  np.testing.assert_array_equal(metrics["moe_balance_bias/0"][0], np.zeros(8))
  nnx.view(layer, deterministic=True)(x)  # evaluation forwards count nothing
  layer.eval()
  layer(x)
  layer.train()
  np.testing.assert_array_equal(layer.balance.load[...], 2 * counts)
  end_step(layer)
  np.testing.assert_allclose(layer.balance.bias[...], 0.1 * np.sign(counts.mean() - counts), rtol=1e-6)
  np.testing.assert_array_equal(layer.balance.load[...], np.zeros(8))
  biased = top_k_route(layer.router(x.reshape(-1, 8)), 2, score="sigmoid", bias=layer.balance.bias[...])
  _, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  np.testing.assert_array_equal(metrics["moe_balance_bias/0"][0], layer.balance.bias[...])
  biased_counts = np.bincount(np.asarray(biased.experts).reshape(-1), minlength=8)
  np.testing.assert_array_equal(layer.balance.load[...], biased_counts)


def test_bias_balances_a_skewed_router():
  """The bias alone (no loss, no gradient) evens out the load of a router that prefers two experts."""
  layer = _build(score="sigmoid", bias_update_rate=0.02, load_balance_weight=0.0, z_loss_weight=0.0)
  layer.router.kernel[...] = layer.router.kernel[...].at[:, :2].add(0.5)
  x = _x(5, (4, 32, 8)) + 1.0

  @nnx.jit
  def step(layer, x):  # one training forward, then the end of the optimizer step
    _, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
    end_step(layer)
    return metrics["moe_max_violation"][0]

  violation = [float(step(layer, x)) for _ in range(60)]
  assert violation[0] > 1.5 and max(violation[-10:]) < 0.5 * violation[0], violation


def test_jitter_off_in_evaluation_forward():
  layer = _build(jitter=0.5)
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  batch = {"inputs": _x(6)}
  a = forward(graphdef, params, rest, batch, deterministic=True)[0]
  b = forward(graphdef, params, rest, batch, deterministic=True)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(forward(graphdef, params, rest, batch)[0], a)


@pytest.mark.parametrize("options, match", [
  (dict(n_groups=3), "n_groups=3 must divide"),
  (dict(n_groups=4, top_groups=1, top_k=3), "top_groups=1"),
  (dict(bias_update_rate=-1.0), "bias_update_rate"),
  (dict(routing="expert_choice", bias_update_rate=1e-3), "token_choice only"),
  (dict(score="softplus"), "router score"),
])
def test_bad_routing_options_fail_with_the_fix(options, match):
  with pytest.raises(ValueError, match=match):
    _build(**options)


# The train step: grad accumulation equals one big batch (bias included), the bias is checkpointed.

@functools.cache
def _program(grad_accum: int):
  c = tiny_lm(batch_size=8)
  c.model.blocks = "(none, moe) * 2"
  c.model.options.moe = dict(n_experts=8, top_k=2, score="sigmoid", bias_update_rate=0.05,
                             load_balance_weight=0.0, seq_balance_weight=1e-2)
  c.optim.grad_accum = grad_accum
  # Adam with eps 1e-8 turns fp32 rounding of a near-zero gradient (summation order differs between one batch
  # and two micro-batches) into an update of up to lr; eps 1e-3 keeps the update linear in such gradients, so
  # the parameters compare what accumulation must preserve: the gradients.
  c.optim.eps = 1e-3
  c.mesh.shape.update(dict(data=2))
  mesh = mesh_lib.make_mesh(c.mesh.shape, devices=jax.devices()[:2])
  program = build_program(c, mesh)
  it = pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size)
  return program, [global_batch(next(it), program.batch_sharding) for _ in range(2)]


def _biases(state) -> list[np.ndarray]:
  return [np.asarray(state["rest"]["blocks"][i]["ffn"]["balance"]["bias"]) for i in range(2)]


def test_grad_accumulation_equals_full_batch_bias_included():
  full, batches = _program(1)
  accum, _ = _program(2)
  s_full, s_acc = full.init_state(), accum.init_state()
  for batch in batches:
    s_full, m_full = full.train_step(s_full, batch)
    s_acc, m_acc = accum.train_step(s_acc, batch)
  for b_full, b_acc in zip(_biases(s_full), _biases(s_acc)):
    assert np.abs(b_full).max() > 0  # two updates of +-0.05 happened
    np.testing.assert_array_equal(b_acc, b_full)
  np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(s_acc["params"]), jax.device_get(s_full["params"]), rtol=2e-4, atol=2e-6)
  assert {"layers/moe_expert_load/0", "layers/moe_expert_load/1", "layers/moe_balance_bias/1",
          "layers/moe_dropped_fraction/0", "aux/moe_seq_balance"} <= set(m_full)


def test_bias_saved_in_checkpoints_and_resume_continues_exactly(tmp_path):
  program, batches = _program(1)
  state, _ = program.train_step(program.init_state(), batches[0])
  ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1, async_save=False)
  ckpt.save(1, state, {}, {})
  ckpt.wait()
  restored, _, _ = ckpt.restore(1, program.setup.abstract_state)
  ckpt.close()
  for a, b in zip(_biases(restored), _biases(state)):
    assert np.abs(b).max() > 0
    np.testing.assert_array_equal(a, b)
  after, _ = program.train_step(state, batches[1])
  resumed, _ = program.train_step(restored, batches[1])
  chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(after))


def test_generate_with_moe_is_greedy_forward_and_counts_nothing():
  c = tiny_lm()
  c.model.blocks = "(attention, moe) * 1"
  c.model.options.moe = dict(n_experts=4, top_k=2, score="sigmoid", bias_update_rate=0.1)
  model = models.build(c.model, rngs=nnx.Rngs(0))
  prompt = jnp.array([[1, 2, 3]], jnp.int32)
  out = generate(model, prompt, 3)
  np.testing.assert_array_equal(out[:, :3], prompt)
  logits = nnx.view(model, deterministic=True)(out)  # causal: position t's logits see tokens <= t only
  np.testing.assert_array_equal(out[:, 3:], jnp.argmax(logits[:, 2:5], -1))
  np.testing.assert_array_equal(model.blocks[0].ffn.balance.load[...], np.zeros(4))
