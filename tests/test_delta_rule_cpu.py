"""The delta rules' implementation="cpu" (mode="recurrent"): the recurrent form and its hand-written backward as
C++ kernels (`delta_rule_cpu`), against the golden vectors and the XLA ops: outputs, final state, every gradient,
packed rows, per-channel gates, sequences that are not a multiple of the kernels' segment; the mixer options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import linear_attention as la
from layers import registry
from layers.context import LayerContext
from layers.linear_attention.ops import delta_rule_cpu
from layers.linear_attention.ops.gated_delta_rule import recurrent
from tests.test_linear_attention_ops import GATES, GOLDEN, make_inputs, rel_rmse
from tests.test_linear_attention_pallas import SEGMENT_IDS, _assert_close, op_runner


@pytest.fixture
def kernel(cpu_kernel):
  cpu_kernel(delta_rule_cpu.enabled)


OPS = ("delta_rule", "gated_delta_rule", "kda")


@pytest.mark.parametrize("op", ["delta_rule", "gated_delta_rule"])
def test_matches_golden_vectors(kernel, op):
  data = np.load(GOLDEN)
  names = ("q", "k", "v", *GATES[op], "initial_state")
  args = tuple(jnp.asarray(data[f"{op}/in/{n}"]) for n in (*names, "do", "dht"))
  o, ht, grads = jax.jit(lambda a: _cpu_parts(op, a, None))(args)
  assert rel_rmse(o, data[f"{op}/out/o"]) < 2e-3
  assert rel_rmse(ht, data[f"{op}/out/ht"]) < 2e-3
  for name, grad in zip(names, grads, strict=True):
    assert rel_rmse(grad, data[f"{op}/grad/{name}"]) < (2e-2 if name in ("g", "beta") else 5e-3), name


def _cpu_parts(op, args, segment_ids):
  *inputs, do, dht = args

  def forward(*xs):
    return getattr(la, op)(*xs[:-1], initial_state=xs[-1], output_final_state=True, mode="recurrent",
                           segment_ids=segment_ids, implementation="cpu")

  (o, ht), pullback = jax.vjp(forward, *inputs)
  return o, ht, pullback((do, dht))


@pytest.mark.parametrize("op", OPS)
def test_equals_xla_op_on_packed_rows(kernel, op):
  """Three documents per row, an initial state, T = 40: o, ht and every gradient equal the XLA chunk op's."""
  args, do, dht = make_inputs("gated_delta_rule" if op == "kda" else op, 40, key=7, b=2, dk=16, dv=16)
  if op == "kda":  # a log decay per key channel
    q, k, v, _, *rest = args
    args = (q, k, v, jnp.asarray(np.random.default_rng(3).uniform(-1.0, 0.0, k.shape), jnp.float32), *rest)
  args = (*args, do, dht)
  seg = jnp.asarray(SEGMENT_IDS)
  _assert_close(jax.jit(lambda a, s: _cpu_parts(op, a, s))(args, seg), op_runner(op, "xla")(args, seg))


@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_equals_the_recurrent_spec(kernel, per_channel):
  """Against autodiff of the XLA recurrence, gate per step or per key channel (KDA's), over 150 steps (two
  saved segment states and a partial third) with document starts, one of them at a segment boundary."""
  rng = np.random.default_rng(int(per_channel))
  b, t, h, dk, dv = 2, 150, 3, 16, 8
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  q, k = (jnp.asarray(unit(rng.normal(size=(b, t, h, dk))), jnp.float32) for _ in range(2))
  v = jnp.asarray(rng.normal(size=(b, t, h, dv)), jnp.float32)
  g = jnp.asarray(-rng.uniform(0, 0.5, size=(b, t, h, dk) if per_channel else (b, t, h)), jnp.float32)
  beta = jnp.asarray(rng.uniform(size=(b, t, h)), jnp.float32)
  s0 = jnp.asarray(rng.normal(size=(b, h, dk, dv)), jnp.float32)
  starts = jnp.zeros((b, t), bool).at[0, 37].set(True).at[1, delta_rule_cpu.SEGMENT].set(True)
  weights = jnp.cos(jnp.arange(dv, dtype=jnp.float32))

  def loss(fn):
    def f(*xs):
      o, state = fn(*xs, starts)
      return jnp.sum(o * weights) + jnp.sum(state**2)
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(6))))

  (got, got_grads), (want, want_grads) = (loss(fn)(q, k, v, g, beta, s0) for fn in (delta_rule_cpu.recurrent,
                                                                                     recurrent))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for name, a, w in zip(("q", "k", "v", "g", "beta", "s0"), got_grads, want_grads):
    np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name)


def test_rejects_unsupported_arguments():
  args, _, _ = make_inputs("gated_delta_rule", 8, dk=16, dv=16)
  with pytest.raises(ValueError, match="use mode='recurrent'"):
    la.gated_delta_rule(*args[:-1], implementation="cpu")
  with pytest.raises(ValueError, match="'cpu' is not implemented"):
    la.gla(*make_inputs("gla", 8, dk=16, dv=16)[0][:-1], mode="recurrent", implementation="cpu")


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net", "kda"])
def test_mixer_option_and_fallback(kernel, monkeypatch, name):
  """mode="recurrent", implementation="cpu" runs the kernels in training and decoding; with ABLAX_CPU_KERNELS=0
  the same layer traces the XLA recurrence, with the same output."""
  ctx = LayerContext(d_model=32, n_heads=2)
  model = registry.build("mixer", name, ctx, rngs=nnx.Rngs(0), mode="recurrent", implementation="cpu")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 40, 32)), jnp.float32)
  seg = jnp.asarray(SEGMENT_IDS)

  def traced(x):  # a new function each time: a trace is cached per function, and the choice is made in tracing
    return model(x, segment_ids=seg)

  assert "ablax_delta_rule_forward" in str(jax.make_jaxpr(traced)(x))
  y = jax.jit(traced)(x)
  y1 = jax.jit(lambda x, cache: model.decode(x, cache, 0)[0])(x[:, :1], model.init_cache(2, 48))  # kernel, T = 1
  np.testing.assert_allclose(y1, y[:, :1], rtol=1e-5, atol=1e-6)
  monkeypatch.setenv("ABLAX_CPU_KERNELS", "0")

  def traced_again(x):
    return model(x, segment_ids=seg)

  assert "ablax_delta_rule_forward" not in str(jax.make_jaxpr(traced_again)(x))
  np.testing.assert_allclose(y, jax.jit(traced_again)(x), rtol=1e-5, atol=1e-6)
