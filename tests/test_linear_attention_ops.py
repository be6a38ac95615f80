"""Linear-attention ops: modes agree, golden vectors, dtype policy, long strong-decay stability."""

import functools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import linear_attention as la

GOLDEN = pathlib.Path(__file__).parent / "golden" / "linear_attention.npz"
# op name -> names of its per-step gate / beta arguments, in call order
GATES = {
  "linear_attn": (),
  "simple_gla": ("g",),
  "gla": ("gk",),
  "delta_rule": ("beta",),
  "gated_delta_rule": ("g", "beta"),
}
OPS = tuple(GATES)
CHUNK = 16


def rel_rmse(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@functools.cache
def vjp_fn(op: str | Callable, mode: str, chunk_size: int = CHUNK):
  """jit(args, do, dht -> (o, ht, grads of sum(o*do) + sum(ht*dht) w.r.t. every arg)); args end with s0.
  op: a name in layers.linear_attention or an op-like function."""
  fn = getattr(la, op) if isinstance(op, str) else op

  def forward(*args):
    return fn(*args[:-1], initial_state=args[-1], output_final_state=True, mode=mode, chunk_size=chunk_size)

  def run(args, do, dht):
    (o, ht), pullback = jax.vjp(forward, *args)
    return o, ht, pullback((do.astype(o.dtype), dht))

  return jax.jit(run)


def make_inputs(op: str, t: int, key: int = 0, b: int = 1, h: int = 2, dk: int = 8, dv: int = 16,
                gate_low: float = -1.0):
  """Random inputs for `op` (q/k L2-normalised for the delta rules), s0, and cotangents do, dht.

  numpy, not jax.random: eager jax ops would each compile, and compiles dominate this file's time.
  """
  rng = np.random.default_rng(key)

  def normal(*shape):
    return rng.standard_normal(shape, np.float32)

  q, k, v = normal(b, t, h, dk), normal(b, t, h, dk), normal(b, t, h, dv)
  if "delta" in op:
    q, k = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
  gates = {
    "g": rng.uniform(gate_low, 0.0, (b, t, h)),
    "gk": rng.uniform(gate_low, 0.0, (b, t, h, dk)),
    "beta": rng.uniform(0.0, 1.0, (b, t, h)),
  }
  args = (q, k, v, *(gates[name] for name in GATES[op]), normal(b, h, dk, dv))
  return tuple(jnp.asarray(x, jnp.float32) for x in args), jnp.asarray(normal(b, t, h, dv)), \
    jnp.asarray(normal(b, h, dk, dv))


@pytest.mark.parametrize("op", OPS)
def test_matches_golden_vectors(op):
  """The chunk form against the reference library (recurrent and parallel are tied to it below)."""
  data = np.load(GOLDEN)
  names = ("q", "k", "v", *GATES[op], "initial_state")
  args = tuple(jnp.asarray(data[f"{op}/in/{n}"]) for n in names)
  o, ht, grads = vjp_fn(op, "chunk", 32)(
    args, jnp.asarray(data[f"{op}/in/do"]), jnp.asarray(data[f"{op}/in/dht"]))
  assert rel_rmse(o, data[f"{op}/out/o"]) < 2e-3
  assert rel_rmse(ht, data[f"{op}/out/ht"]) < 2e-3
  for name, grad in zip(names, grads):
    tol = 2e-2 if name in ("g", "gk", "beta") else 5e-3
    assert rel_rmse(grad, data[f"{op}/grad/{name}"]) < tol, name


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("t", [1, 63, 100])
def test_modes_agree(op, t):
  """chunk (and parallel, at one T) equal the recurrent specification: o, final state, every gradient."""
  args, do, dht = make_inputs(op, t, key=t)
  ref = vjp_fn(op, "recurrent")(args, do, dht)
  for mode in ("chunk", "parallel") if t == 100 else ("chunk",):
    o, ht, grads = vjp_fn(op, mode)(args, do, dht)
    np.testing.assert_allclose(o, ref[0], rtol=1e-4, atol=1e-4, err_msg=mode)
    np.testing.assert_allclose(ht, ref[1], rtol=1e-4, atol=1e-4, err_msg=mode)
    for i, (grad, grad_ref) in enumerate(zip(grads, ref[2])):
      np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=2e-4, err_msg=f"{mode} grad {i}")


def test_without_initial_state_equals_zero_state():
  """initial_state=None means zeros (shared by every op through op_utils.run); no state unless asked."""
  args, do, dht = make_inputs("gated_delta_rule", 63, key=63)
  o_none, ht_none = jax.jit(lambda *a: la.gated_delta_rule(*a, output_final_state=True, chunk_size=CHUNK))(
    *args[:-1])
  o_zero, ht_zero, _ = vjp_fn("gated_delta_rule", "recurrent")((*args[:-1], jnp.zeros_like(args[-1])), do, dht)
  np.testing.assert_allclose(o_none, o_zero, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ht_none, ht_zero, rtol=1e-4, atol=1e-5)
  assert jax.eval_shape(lambda *a: la.gated_delta_rule(*a), *args[:-1])[1] is None


@pytest.mark.parametrize("op", OPS)
def test_initial_state_gradient_flows(op):
  """d loss / d s0 is nonzero in chunk mode and equals the recurrent one (the state is not detached)."""
  args, do, dht = make_inputs(op, 63, key=63)
  no_dht = jnp.zeros_like(dht)  # only through the outputs, so s0 must reach o
  _, _, grads = vjp_fn(op, "chunk")(args, do, no_dht)
  _, _, ref = vjp_fn(op, "recurrent")(args, do, no_dht)
  assert float(jnp.max(jnp.abs(grads[-1]))) > 1e-3
  np.testing.assert_allclose(grads[-1], ref[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_bf16_inputs_keep_fp32_state(op):
  """bf16 in: o comes back bf16, the state fp32, and both equal the fp32 computation on the same values."""
  args, do, dht = make_inputs(op, 63, key=5)
  args16 = tuple(x.astype(jnp.bfloat16) for x in args)
  o16, ht16, grads16 = vjp_fn(op, "chunk")(args16, do, dht)
  o32, ht32, _ = vjp_fn(op, "chunk")(tuple(x.astype(jnp.float32) for x in args16), do, dht)
  assert o16.dtype == jnp.bfloat16 and ht16.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 for g in grads16)
  np.testing.assert_allclose(ht16, ht32, rtol=1e-5, atol=1e-5)  # no bf16 rounding inside
  np.testing.assert_allclose(np.asarray(o16, np.float32), o32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("op", ["simple_gla", "gla", "gated_delta_rule"])
def test_long_sequence_strong_decay_is_finite(op):
  """T = 16384 with log gates down to -20 per step: outputs, state and gradients stay finite."""
  args, do, dht = make_inputs(op, 16384, h=1, dk=16, dv=16, gate_low=-20.0)
  o, ht, grads = vjp_fn(op, "chunk", 64)(args, do, dht)
  for x in (o, ht, *grads):
    assert bool(jnp.all(jnp.isfinite(x)))
  assert float(jnp.max(jnp.abs(o))) > 0


def test_rejects_bad_arguments():
  args, _, _ = make_inputs("gla", 8)
  with pytest.raises(ValueError, match="mode"):
    la.gla(*args[:-1], mode="fused")
  with pytest.raises(ValueError, match="gk"):
    la.gla(*args[:3], args[3][..., :4])
  with pytest.raises(ValueError, match="initial_state"):
    la.gla(*args[:-1], initial_state=args[-1][:, :1])
