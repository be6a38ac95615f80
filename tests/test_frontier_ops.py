"""The frontier linear-attention ops (kda, gated_delta_product, dplr_delta_rule): golden vectors (plain and
packed rows), chunk == recurrent at T = 1, packed rows == each document alone in every mode, each op reduces
to the gated delta rule where the maths says so, T = 16384 with strong decay stays finite, dtypes, argument
checks, the docstring examples."""

import doctest
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import linear_attention as la
from tests.test_linear_attention_ops import rel_rmse, vjp_fn
from tests.test_linear_attention_packed import (
  PACKINGS,
  T,
  documents_alone,
  packed_vjp_fn,
  random_packing,
  segment_ids_and_spans,
)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "frontier.npz"
MODES = ("recurrent", "chunk", "parallel")
N = 2  # Householder steps per token in the generated inputs (the golden file's is meta/num_householder)


def gated_delta_product_by_token(q, k, v, g, beta, **options):
  """gated_delta_product with k, v [B, T, n, H, *] and beta [B, T, n, H] (step j of token t at [:, t, j]): time
  on axis 1 for every argument, so the shared helpers cut documents along it; the same memory layout as the
  op's [B, T·n, H, *]."""
  b, t, n = k.shape[:3]

  def steps(x):
    return x.reshape(b, t * n, *x.shape[3:])

  return la.gated_delta_product(q, steps(k), steps(v), g, steps(beta), num_householder=n, **options)


# op -> the function the tests call (time on axis 1 everywhere, initial_state as keyword) and argument names
OPS = {"kda": la.kda, "gated_delta_product": gated_delta_product_by_token, "dplr_delta_rule": la.dplr_delta_rule}
NAMES = {
  "kda": ("q", "k", "v", "g", "beta"),
  "gated_delta_product": ("q", "k", "v", "g", "beta"),
  "dplr_delta_rule": ("q", "k", "v", "a", "b", "gk"),
}


def make_inputs(op: str, t: int, key: int = 0, b: int = 1, h: int = 2, dk: int = 8, dv: int = 16,
                gate_low: float = -1.0):
  """Random inputs in the ranges the layers produce, s0 last, and cotangents do, dht (numpy: no eager compiles).

  q, k unit vectors for the delta rules; gated DeltaProduct's beta in [0, 2] (negative eigenvalues);
  RWKV-7's a = −κ̂ and b = κ̂ ⊙ σ(·) with κ̂ a unit vector, k and q not normalised.
  """
  rng = np.random.default_rng(key)

  def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  q = unit(normal(b, t, h, dk))
  if op == "kda":
    steps = (unit(normal(b, t, h, dk)), normal(b, t, h, dv), rng.uniform(gate_low, 0, (b, t, h, dk)),
             rng.uniform(0, 1, (b, t, h)))
  elif op == "gated_delta_product":
    steps = (unit(normal(b, t, N, h, dk)), normal(b, t, N, h, dv), rng.uniform(gate_low, 0, (b, t, h)),
             rng.uniform(0, 2, (b, t, N, h)))
  else:
    q, kappa = normal(b, t, h, dk), unit(normal(b, t, h, dk))
    steps = (normal(b, t, h, dk), normal(b, t, h, dv), -kappa, kappa * rng.uniform(0, 1, (b, t, h, 1)),
             rng.uniform(gate_low, 0, (b, t, h, dk)))
  args = tuple(jnp.asarray(x, jnp.float32) for x in (q, *steps, normal(b, h, dk, dv)))
  return args, jnp.asarray(normal(b, t, h, dv)), jnp.asarray(normal(b, h, dk, dv))


def golden_case(name: str):
  """Golden arguments (s0 last), do, dht, and a function mapping our gradients to the file's layout."""
  data = np.load(GOLDEN)
  op = name.removeprefix("packed/")
  names = (*NAMES[op], "initial_state")
  args = [np.asarray(data[f"{name}/in/{n}"]) for n in names]
  if op == "gated_delta_product":  # [B, T·n, ...] -> [B, T, n, ...]: step j of token t at t·n + j
    n = int(data["meta/num_householder"])
    args = [x.reshape(x.shape[0], -1, n, *x.shape[2:]) if i in (1, 2, 4) else x for i, x in enumerate(args)]
  wanted = {key: data[f"{name}/{key}"] for key in ("out/o", "out/ht", *(f"grad/{n}" for n in names))}
  return (tuple(jnp.asarray(x) for x in args), jnp.asarray(data[f"{name}/in/do"]),
          jnp.asarray(data[f"{name}/in/dht"]), names, wanted)


def assert_golden(o, ht, grads, names, wanted):
  """Tolerances of the golden README: o, ht 2e-3; gradients 5e-3; gate, beta, a, b gradients 2e-2."""
  assert rel_rmse(o, wanted["out/o"]) < 2e-3
  assert rel_rmse(ht, wanted["out/ht"]) < 2e-3
  for name, grad in zip(names, grads):
    ref = wanted[f"grad/{name}"]
    tol = 2e-2 if name in ("g", "gk", "beta", "a", "b") else 5e-3
    assert rel_rmse(np.asarray(grad).reshape(ref.shape), ref) < tol, name


@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
@pytest.mark.parametrize("op", OPS)
def test_matches_golden_vectors(op, mode):
  """B=2, T=96, H=2, K=32, V=24 (gated DeltaProduct n=2) against the reference library: o, final state and the
  gradient w.r.t. every input, initial_state included (chunk 16: six chunks)."""
  args, do, dht, names, wanted = golden_case(op)
  o, ht, grads = vjp_fn(OPS[op], mode)(args, do, dht)
  assert_golden(o, ht, grads, names, wanted)


@pytest.mark.parametrize("mode", MODES)
def test_kda_packed_matches_golden_vectors(mode):
  """Documents of 20, 1, 43, 32 tokens run by the reference library one by one (chunk edges at 16, 32, 48, 64,
  80: one boundary on an edge)."""
  args, do, dht, names, wanted = golden_case("packed/kda")
  segment_ids = jnp.asarray(np.load(GOLDEN)["packed/segment_ids"])
  o, ht, grads = packed_vjp_fn(la.kda, mode)(args, segment_ids, do, dht)
  assert_golden(o, ht, grads, names, wanted)


@pytest.mark.parametrize("op", OPS)
def test_one_step_chunk_equals_recurrent(op):
  """T = 1 (one step padded to a chunk) without segment_ids: o, final state, every gradient. Longer rows in
  every mode are covered by the golden vectors (recurrent, chunk) and the packed tests (all modes, T = 45)."""
  args, do, dht = make_inputs(op, 1, key=1)
  ref = vjp_fn(OPS[op], "recurrent")(args, do, dht)
  o, ht, grads = vjp_fn(OPS[op], "chunk")(args, do, dht)
  np.testing.assert_allclose(o, ref[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ht, ref[1], rtol=1e-4, atol=1e-4)
  for name, grad, grad_ref in zip((*NAMES[op], "s0"), grads, ref[2]):
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=2e-4, err_msg=f"grad {name}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_packed_rows_equal_documents_alone(op, mode):
  """Rows packed with boundaries on chunk edges, one-token documents, a reused id, plus two random rows: o,
  final state and every gradient (initial_state included) equal each document run alone by the recurrent form."""
  rng = np.random.default_rng(list(OPS).index(op) * len(MODES) + MODES.index(mode))
  packings = (*PACKINGS, random_packing(rng), random_packing(rng))
  segment_ids, spans = segment_ids_and_spans(packings)
  args, do, dht = make_inputs(op, T, key=int(rng.integers(1000)), b=len(packings))
  o, ht, grads = packed_vjp_fn(OPS[op], mode)(args, segment_ids, do, dht)
  ref_o, ref_ht, ref_grads = documents_alone(OPS[op], args, do, dht, spans)
  np.testing.assert_allclose(o, ref_o, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ht, ref_ht, rtol=1e-4, atol=1e-4)
  for name, grad, ref in zip((*NAMES[op], "s0"), grads, ref_grads):
    assert bool(jnp.all(jnp.isfinite(grad))), name
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=2e-4, err_msg=f"grad {name}")


@jax.jit
def _reductions(q, k, v, g, beta, s0):
  """(gated_delta_rule recurrent, kda / gated_delta_product n=1 / dplr_delta_rule chunk) outputs and states on
  inputs where each equals the gated delta rule."""
  common = dict(initial_state=s0, output_final_state=True, chunk_size=16)
  ref = la.gated_delta_rule(q, k, v, g, beta, mode="recurrent", **common)
  g_channels = jnp.broadcast_to(g[..., None], k.shape)
  kda = la.kda(q, k, v, g_channels, beta, **common)
  product = la.gated_delta_product(q, k, v, g, beta, num_householder=1, **common)
  # exp(g) (I − β k kᵀ) S + β k vᵀ  =  diag(exp(g)) S + (β k)((−exp(g) k)ᵀ S) + (β k) vᵀ
  dplr = la.dplr_delta_rule(q, beta[..., None] * k, v, -jnp.exp(g)[..., None] * k, beta[..., None] * k, g_channels,
                            **common)
  return ref, (kda, product, dplr)


def test_each_op_reduces_to_the_gated_delta_rule():
  """kda with one decay for all channels, gated DeltaProduct with n = 1, and the DPLR rule with a = −exp(g) k,
  b = β k, k ← β k all equal gated_delta_rule (its recurrent form): o and final state."""
  args, _, _ = make_inputs("kda", 37, key=3)
  q, k, v, g, beta, s0 = args
  ref, results = _reductions(q, k, v, g[..., 0], beta, s0)
  for name, (o, ht) in zip(("kda", "gated_delta_product", "dplr_delta_rule"), results):
    np.testing.assert_allclose(o, ref[0], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(ht, ref[1], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op", OPS)
def test_long_sequence_strong_decay_is_finite(op):
  """T = 16384 with log gates down to -20 per step, chunk mode: outputs, state and every gradient finite."""
  args, do, dht = make_inputs(op, 16384, h=1, dk=16, dv=16, gate_low=-20.0)
  o, ht, grads = vjp_fn(OPS[op], "chunk", 64)(args, do, dht)
  for name, x in zip(("o", "ht", *NAMES[op], "s0"), (o, ht, *grads)):
    assert bool(jnp.all(jnp.isfinite(x))), name
  assert float(jnp.max(jnp.abs(o))) > 0


@pytest.mark.parametrize("op", OPS)
def test_bf16_inputs_give_bf16_output_and_fp32_state(op):
  args, _, _ = make_inputs(op, 8)
  out = jax.eval_shape(lambda *a: OPS[op](*a[:-1], initial_state=a[-1], output_final_state=True),
                       *(x.astype(jnp.bfloat16) for x in args))
  assert out[0].dtype == jnp.bfloat16 and out[1].dtype == jnp.float32


def test_rejects_bad_arguments():
  (q, k, v, g, beta, _), _, _ = make_inputs("kda", 8)
  with pytest.raises(ValueError, match=r"g has shape \(1, 8, 2\), expected \(1, 8, 2, 8\)"):
    la.kda(q, k, v, g[..., 0], beta)
  (q, k, v, g, beta, _), _, _ = make_inputs("gated_delta_product", 8)
  k, v, beta = k.reshape(1, 16, 2, 8), v.reshape(1, 16, 2, 16), beta.reshape(1, 16, 2)
  with pytest.raises(ValueError, match="num_householder must be a positive int"):
    la.gated_delta_product(q, k, v, g, beta, num_householder=0)
  with pytest.raises(ValueError, match=r"k has shape \(1, 16, 2, 8\), expected \(1, 24, 2, 8\).*num_householder=3"):
    la.gated_delta_product(q, k, v, g, beta, num_householder=3)
  with pytest.raises(ValueError, match=r"segment_ids has shape \(1, 16\), expected \[B, T\] = \(1, 8\)"):
    la.gated_delta_product(q, k, v, g, beta, num_householder=2, segment_ids=jnp.zeros((1, 16), jnp.int32))
  (q, k, v, a, b, gk, _), _, _ = make_inputs("dplr_delta_rule", 8)
  with pytest.raises(ValueError, match=r"b has shape \(1, 8, 2, 4\), expected \(1, 8, 2, 8\)"):
    la.dplr_delta_rule(q, k, v, a, b[..., :4], gk)


@pytest.mark.parametrize("op", OPS)
def test_docstring_example_runs(op):
  """Each op's docstring ends with a runnable example; it runs and prints what it says."""
  fn = getattr(la, op)
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, op, globs={"jnp": jnp, op: fn}):
    runner.run(test)
  assert runner.tries > 0 and runner.failures == 0

