"""The chunk forms' hand-derived backward (chunk_forms._chunk_recurrence, dplr_delta_rule._chunk) against
autodiff of the recurrent specification in float64 (packed documents and several chunk groups included), and
the block-doubling (I + A)⁻¹ against a triangular solve."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import segments
from layers.linear_attention.ops import chunk_forms, common

# the op modules (the package exports the op functions under the same names)
linear_attn, simple_gla, gla, delta_rule, gated_delta_rule, kda, dplr_delta_rule = (importlib.import_module(
  f"layers.linear_attention.ops.{name}") for name in ("linear_attn", "simple_gla", "gla", "delta_rule",
                                                       "gated_delta_rule", "kda", "dplr_delta_rule"))

# op -> (recurrent form, chunk form, log gate per step: None / "head" / "channel", has beta)
OPS = {
  "linear_attn": (linear_attn._recurrent, linear_attn._chunk, None, False),
  "simple_gla": (simple_gla._recurrent, chunk_forms.chunk_linear, "head", False),
  "gla": (gla._recurrent, gla._chunk, "channel", False),
  "delta_rule": (delta_rule._recurrent, delta_rule._chunk, None, True),
  "gated_delta_rule": (gated_delta_rule.recurrent, chunk_forms.chunk_delta, "head", True),
  "kda": (kda.recurrent, chunk_forms.chunk_delta, "channel", True),
  "dplr_delta_rule": (dplr_delta_rule._recurrent, dplr_delta_rule._chunk, "dplr", False),
}
B, T, H, DK, DV, SIZE = 2, 64, 2, 4, 5, 16
# row 0 one document; row 1 documents starting inside a chunk (10, 40) and at a chunk / group boundary (32)
SEGMENT_IDS = np.array([[0] * T, [0] * 10 + [1] * 22 + [2] * 8 + [3] * 24])


def inputs(op: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
  """q, k, v, gates / beta, s0, do, d_final in float64 (unit q, k for the delta rules, gates down to -2;
  dplr: a = −κ̂, b = κ̂ ⊙ lr with a unit κ̂, RWKV-7's ranges)."""
  _, _, gate, has_beta = OPS[op]
  q, k = rng.standard_normal((2, B, T, H, DK))
  if gate == "dplr":
    kappa = rng.standard_normal((B, T, H, DK))
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    steps = (-kappa, kappa * rng.uniform(0.0, 1.0, (B, T, H, 1)), rng.uniform(-2.0, 0.0, (B, T, H, DK)))
    return (q, k, rng.standard_normal((B, T, H, DV)), *steps, rng.standard_normal((B, H, DK, DV)),
            rng.standard_normal((B, T, H, DV)), rng.standard_normal((B, H, DK, DV)))
  if has_beta:
    q, k = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
  steps = []
  if gate is not None:
    steps.append(rng.uniform(-2.0, 0.0, (B, T, H) if gate == "head" else (B, T, H, DK)))
  if has_beta:
    steps.append(rng.uniform(0.0, 1.0, (B, T, H)))
  return (q, k, rng.standard_normal((B, T, H, DV)), *steps, rng.standard_normal((B, H, DK, DV)),
          rng.standard_normal((B, T, H, DV)), rng.standard_normal((B, H, DK, DV)))


@pytest.mark.parametrize("op", OPS)
def test_custom_backward_matches_autodiff_of_recurrent_form_in_float64(op, monkeypatch):
  """o, final state and the gradient w.r.t. every input, s0 included, to 1e-9: exact document resets
  (segment_ids) and an outer scan of two groups of two chunks (GROUP_CHUNKS = 2)."""
  monkeypatch.setattr(chunk_forms, "GROUP_CHUNKS", 2)
  recurrent, chunk, _, _ = OPS[op]
  with jax.enable_x64(True):
    *args, do, d_final = (jnp.asarray(x, jnp.float64) for x in inputs(op, np.random.default_rng(0)))
    ids = jnp.asarray(SEGMENT_IDS)
    docs = common.chunk_documents(segments.document_index(ids), T // SIZE, SIZE)
    starts = segments.document_starts(ids)

    def loss(form):
      def f(*a):
        o, final = form(*a)
        return jnp.sum(o * do) + jnp.sum(final * d_final), (o, final)
      return jax.jit(jax.grad(f, argnums=tuple(range(len(args))), has_aux=True))

    grads, (o, final) = loss(lambda *a: chunk(*a, docs, SIZE))(*args)
    grads_ref, (o_ref, final_ref) = loss(lambda *a: recurrent(*a, starts))(*args)
  assert o.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(np.asarray(final), np.asarray(final_ref), rtol=1e-9, atol=1e-10)
  for i, (grad, ref) in enumerate(zip(grads, grads_ref)):
    grad, ref = np.asarray(grad), np.asarray(ref)
    assert np.max(np.abs(ref)) > 1e-3, i  # every input matters here
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-10, err_msg=f"gradient {i}")


@pytest.mark.parametrize("size", [1, 48, 64])
def test_unit_lower_inverse_matches_triangular_solve(size):
  """Block doubling (C a power of two or not) and its closed-form backward against solve_triangular, on
  delta-rule-like A = β k.k."""
  rng = np.random.default_rng(size)
  k = rng.standard_normal((3, size, 16)).astype(np.float32)
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  a = np.tril(rng.uniform(0, 1, (3, size, 1)) * (k @ k.transpose(0, 2, 1)), -1).astype(np.float32)
  inv = jax.jit(chunk_forms.unit_lower_inverse)(jnp.asarray(a))
  eye = np.broadcast_to(np.eye(size, dtype=np.float32), a.shape)
  ref = jax.scipy.linalg.solve_triangular(eye + a, eye, lower=True, unit_diagonal=True)
  np.testing.assert_allclose(inv, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.triu(np.asarray(inv), 1), 0.0)  # lower triangular, exactly
  weights = jnp.asarray(rng.standard_normal(a.shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda a: jnp.sum(chunk_forms.unit_lower_inverse(a) * weights)))(jnp.asarray(a))
  grad_ref = jax.grad(lambda a: jnp.sum(jax.scipy.linalg.solve_triangular(
    eye + jnp.tril(a, -1), eye, lower=True, unit_diagonal=True) * weights))(jnp.asarray(a))
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-4)  # the closed-form backward


@pytest.mark.parametrize("op", ["linear_attn", "gated_delta_rule"])
def test_backward_keeps_one_state_per_group(op):
  """Compiled fwd+bwd temporaries at T = 16384 (H = 4, K = V = 64, B = 1) stay under 3x the size of q: the
  residual is one state per group of 16 chunks and the gradients are written in place. A state per chunk is
  as large as q here (T / 64 states of 64 x 64 per head), and stacked per-group gradients copied out take
  two more: 4.9x / 5.6x before this layout."""
  t, h, d = 16384, 4, 64
  q = jax.ShapeDtypeStruct((1, t, h, d), jnp.float32)
  gate = jax.ShapeDtypeStruct((1, t, h), jnp.float32)
  fn, args = {"linear_attn": (lambda q, k, v: linear_attn.linear_attn(q, k, v, chunk_size=64)[0], (q, q, q)),
              "gated_delta_rule": (lambda q, k, v, g, b: gated_delta_rule.gated_delta_rule(
                q, k, v, g, b, chunk_size=64)[0], (q, q, q, gate, gate))}[op]
  grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
  temp = jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes
  assert temp < 3 * t * h * d * 4, temp / (t * h * d * 4)
