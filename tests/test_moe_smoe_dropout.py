"""SMoE-Dropout: the frozen random router, the schedule of active experts (against the authors' formula), the
layer against a direct formula, the schedule through the train step, evaluation at several k, the report's table."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric, end_step
from layers.context import LayerContext
from layers.moe import smoe_dropout
from layers.moe.experts import grouped_apply
from layers.moe.routing import fixed_random_projection, top_k_route
from layers.moe.smoe_dropout import active_experts, mean_active_experts
from tests.foundation_configs import tiny_lm
from train import mesh as mesh_lib
from train import report
from train.config import ConfigError
from train.data import pipeline
from train.loop import build_program, evaluate, global_batch

CTX = LayerContext(d_model=8, d_ff=32)


def _x(seed=0, shape=(2, 6, 8)):
  return jax.random.normal(jax.random.key(seed), shape)


def _build(**options):
  return registry.build("ffn", "smoe_dropout", CTX, rngs=nnx.Rngs(0),
                        **{"n_experts": 4, "top_k_start": 2, "ramp_steps": 4, "tile_size": 4, **options})


def test_docstring_examples_run():
  result = doctest.testmod(smoe_dropout)
  assert result.attempted > 0 and result.failed == 0


def _paper_gate_number(step, overall, k_min, k_max):
  """new_utils.calculate_gate_number, mode linear_increase, of the authors' code (Python's round)."""
  return int(np.clip(round((k_max - k_min) * step / overall) + k_min, k_min, k_max))


@pytest.mark.parametrize("start, n, ramp", [(8, 16, 400), (2, 4, 4), (1, 8, 7), (3, 3, 10)])
def test_schedule_is_the_papers_linear_increase(start, n, ramp):
  steps = np.arange(0, 2 * ramp + 3)
  got = np.asarray(active_experts(steps, top_k_start=start, n_experts=n, ramp_steps=ramp))
  np.testing.assert_array_equal(got, [_paper_gate_number(s, ramp, start, n) for s in steps])
  want_mean = np.mean([_paper_gate_number(s, ramp, start, n) for s in range(ramp)])
  assert mean_active_experts(top_k_start=start, n_experts=n, ramp_steps=ramp) == pytest.approx(want_mean)
  assert int(active_experts(123, top_k_start=start, n_experts=n, ramp_steps=0)) == start


def test_router_is_a_frozen_uniform_projection_with_bias():
  kernel, bias = fixed_random_projection(3, 256, 16)
  bound = 256**-0.5
  for w in (np.asarray(kernel), np.asarray(bias)):
    assert np.all(np.abs(w) <= bound) and np.abs(w).max() > 0.9 * bound
  assert abs(float(np.std(np.asarray(kernel))) - bound / np.sqrt(3)) < 0.05 * bound  # U(-b, b) has std b / sqrt 3
  layer = _build()
  assert layer.router.kernel is None
  assert all("router" not in str(path) for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param)))


def _direct(layer, x2, k):
  """Top-k of x W + b, softmax over the k chosen logits, sum of the chosen ReLU experts (numpy)."""
  kernel, bias = fixed_random_projection(layer.router.seed, 8, layer.n_experts)
  logits = np.asarray(x2) @ np.asarray(kernel) + np.asarray(bias)
  f = layer.experts.ffn
  up_w, up_b = np.asarray(f.up.kernel[...]), np.asarray(f.up.bias[...])
  down_w, down_b = np.asarray(f.down.kernel[...]), np.asarray(f.down.bias[...])
  out = np.zeros(x2.shape, np.float32)
  for n, row in enumerate(np.asarray(x2)):
    chosen = np.argsort(-logits[n], kind="stable")[:k]
    w = np.exp(logits[n, chosen] - logits[n, chosen].max())
    for e, we in zip(chosen, w / w.sum()):
      out[n] += we * (np.maximum(row @ up_w[e] + up_b[e], 0) @ down_w[e] + down_b[e])
  return out


def test_view_top_k_matches_the_direct_formula():
  layer = _build()
  assert layer.experts.ffn.up.kernel.shape == (4, 8, 32 // 4)  # the dense ffn split evenly
  x = _x()
  for k in (1, 2, 4):
    y = nnx.view(layer, top_k=k)(x)
    np.testing.assert_allclose(y.reshape(-1, 8), _direct(layer, x.reshape(-1, 8), k), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="top_k=5 view of MoE layer 0"):
    nnx.view(layer, top_k=5)


def test_schedule_advances_in_end_step_and_routes_with_its_k():
  layer = _build()
  x = _x(1)

  @nnx.jit
  def train_forward(layer, x):
    y, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
    end_step(layer)
    return y, metrics["smoe_top_k"][0]

  reference = {k: nnx.view(layer, top_k=k)(x) for k in (2, 3, 4)}
  for step in range(6):
    y, k = train_forward(layer, x)
    want = _paper_gate_number(step, 4, 2, 4)
    assert int(k) == want
    np.testing.assert_allclose(y, reference[want], rtol=1e-6, atol=1e-6)
  assert int(layer.step[...]) == 6
  nnx.view(layer, top_k=2)(x)  # evaluation forwards leave the schedule alone
  assert int(layer.step[...]) == 6


def test_gradients_reach_experts_not_router():
  layer = _build()
  grads = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))))(layer, _x(2))
  flat = {str(path): v for path, v in nnx.to_flat_state(grads)}
  assert flat and all("router" not in p for p in flat)
  assert all(float(jnp.max(jnp.abs(v[...]))) > 0 for v in flat.values())


def test_parameters_and_flops_match_the_split_dense_ffn():
  layer = _build(ramp_steps=0, top_k_start=4)
  dense = registry.build("ffn", "mlp", CTX, rngs=nnx.Rngs(0), activation="relu", use_bias=True)
  n_params = lambda m: sum(v.size for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param)))  # noqa: E731
  assert n_params(layer) == n_params(dense) + 3 * 8  # the down bias is per expert
  ramped = _build(ramp_steps=4)  # k = 2, 2, 3, 4 over the ramp: mean 2.75 of 4 experts
  routed = 2 * (2 * 8 * 32)  # up and down kernels of all experts, 2 FLOPs per weight
  assert ramped.flops_per_token(16) == pytest.approx(2 * 8 * 4 + 2.75 / 4 * routed)


def test_bad_options_fail_with_the_fix():
  with pytest.raises(ValueError, match="top_k_start=5 must be in"):
    _build(top_k_start=5)
  with pytest.raises(ValueError, match="ramp_steps=-1"):
    _build(ramp_steps=-1)


# The train step advances the schedule; the eval step reports the loss at several k.

@functools.cache
def _program(eval_top_k=(1, 2, 4)):
  c = tiny_lm(batch_size=8)
  c.model.blocks = "(none, ffn) * 2"
  c.model.options.ffn = dict(layer="smoe_dropout", n_experts=4, top_k_start=2, ramp_steps=3, tile_size=8)
  c.train.eval_top_k = eval_top_k
  mesh = mesh_lib.make_mesh(c.mesh.shape, devices=jax.devices()[:1])
  program = build_program(c, mesh)
  it = pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size)
  return program, [global_batch(next(it), program.batch_sharding) for _ in range(4)]


def test_train_step_advances_schedule_and_eval_reports_each_k():
  program, batches = _program()
  state = program.init_state()
  ks = []
  for batch in batches:
    state, metrics = program.train_step(state, batch)
    ks.append(int(metrics["layers/smoe_top_k"]))
  assert ks == [2, 3, 3, 4]  # k(0..3) with ramp 3 from 2 to 4 experts
  assert int(state["rest"]["blocks"][0]["ffn"]["step"]) == 4
  sums = jax.device_get(program.eval_step(state, batches[0]))
  assert {"loss", "loss/top_k=1", "loss/top_k=2", "loss/top_k=4", "weight/top_k=2", "correct/top_k=1"} <= set(sums)
  np.testing.assert_allclose(sums["loss/top_k=4"], sums["loss"], rtol=1e-6)  # the schedule has reached all 4
  assert sums["loss/top_k=1"] != sums["loss/top_k=4"]


def test_evaluate_weighs_each_k_by_its_own_weights():
  class Batches:  # two eval batches, rewound by evaluate()
    def __init__(self):
      self.i = 0

    def get_state(self):
      return {"i": self.i}

    def set_state(self, state):
      self.i = state["i"]

    def __next__(self):
      self.i += 1
      return {"inputs": np.full((2, 3), self.i, np.int32)}

  def eval_fn(state, batch):  # sums of batch i: loss i at weight 2, and at k=2: loss 3i at weight 1
    i = batch["inputs"][0, 0]
    return {"loss": 2.0 * i, "weight": 2.0, "correct": 1.0, "loss/top_k=2": 3.0 * i, "weight/top_k=2": 1.0,
            "correct/top_k=2": 0.5}

  cfg = tiny_lm()
  cfg.train.update(dict(eval_steps=2, eval_top_k=(2,)))
  sharding = jax.sharding.NamedSharding(mesh_lib.make_mesh(cfg.mesh.shape, devices=jax.devices()[:1]),
                                        jax.sharding.PartitionSpec())
  batches = Batches()
  out = evaluate(eval_fn, None, cfg, batches, batches.get_state(), sharding)
  assert out == pytest.approx({"eval_loss": 1.5, "eval_accuracy": 0.5, "eval_loss/top_k=2": 4.5,
                               "eval_accuracy/top_k=2": 0.5})


def test_eval_top_k_without_a_top_k_layer_fails_before_compiling():
  c = tiny_lm()
  c.train.eval_top_k = (1, 2)
  with pytest.raises(ConfigError, match=r"train\.eval_top_k=\(1, 2\).*smoe_dropout"):
    build_program(c, mesh_lib.make_mesh(c.mesh.shape, devices=jax.devices()[:1]))


def test_report_tabulates_eval_loss_vs_k():
  def run(variant, seed, losses):
    record = {"step": 10, "loss": 2.0, **{f"eval_loss/top_k={k}": v for k, v in losses.items()}}
    return {"run": f"{variant}{seed}", "config": {"model.options.ffn.top_k_start": variant, "seed": seed},
            "records": [record, {"step": 11, "loss": 1.9}]}

  runs = [run(2, 0, {1: 3.0, 4: 2.0}), run(2, 1, {1: 3.2, 4: 2.2}), run(8, 0, {1: 2.5, 4: 2.1})]
  table = report.top_k_markdown(runs, ["model.options.ffn.top_k_start", "seed"])
  assert "| top_k_start | n | k=1 | k=4 |" in table
  assert "| 2 | 2 | 3.1 ± 0.14 | 2.1 ± 0.14 |" in table
  assert "| 8 | 1 | 2.5 | 2.1 |" in table
  assert report.top_k_markdown([{"run": "a", "config": {}, "records": [{"step": 1, "loss": 1.0}]}], []) is None


def test_moe_top_k_view_equals_the_layer_built_with_that_k():
  options = dict(n_experts=4, expert_hidden=8, grouped_matmul="tiled", tile_size=4)
  trained_k2 = registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), top_k=2, **options)
  built_k3 = registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), top_k=3, **options)
  x = _x(3)
  np.testing.assert_allclose(nnx.view(trained_k2, top_k=3)(x), built_k3(x), rtol=1e-6, atol=1e-6)
  assert trained_k2.view_top_k is None
  with pytest.raises(ValueError, match="needs token_choice"):
    nnx.view(registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), routing="expert_choice", **options), top_k=1)


@pytest.mark.parametrize("expert_ffn, options", [("swiglu", None),
                                                 ("mlp", {"activation": "polynorm", "use_bias": True})])
def test_all_experts_path_equals_every_expert_weighted(expert_ffn, options):
  """With k = E the MoE skips dispatch (one dense ffn over all experts' units); it must equal sum_e w_e expert_e."""
  layer = registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), n_experts=4, top_k=4, expert_hidden=8,
                         expert_ffn=expert_ffn, expert_options=options, renormalize=True)
  for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(layer.experts, nnx.Param))):  # distinct per expert
    var[...] = var[...] + 0.3 * jax.random.normal(jax.random.key(i), var.shape)
  x2 = _x(4).reshape(-1, 8)
  route = top_k_route(layer.router(x2), 4, renormalize=True)
  w = jnp.zeros((12, 4)).at[jnp.arange(12)[:, None], route.experts].set(route.weights)
  every = grouped_apply(*layer.experts.split(), jnp.broadcast_to(x2, (4, *x2.shape)))  # [E, N, D], vmapped
  np.testing.assert_allclose(layer(x2), jnp.einsum("ne,end->nd", w, every), rtol=1e-5, atol=1e-5)
