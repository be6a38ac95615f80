"""layers.attention.softmax_attention: golden vectors on packed rows, a dense reference (documents, causal,
window, GQA, V != K), how the implementation is chosen, splash attention through the Pallas interpreter
(alone and under shard_map on the 8 CPU devices), argument checks."""

import contextlib
import doctest
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.attention import softmax_attention
from layers.attention.softmax_attention import choose_implementation, splash_attention
from layers.segments import document_index
from tests.test_linear_attention_ops import rel_rmse

GOLDEN = pathlib.Path(__file__).parent / "golden" / "frontier.npz"


def reference(q, k, v, segment_ids, causal, window):
  """Dense attention written out: token t sees s in its document (a change of id starts one), s <= t if
  causal, t - s < window; fp32 softmax; kv head of query head i is i // (H / Hkv)."""
  b, t, h, dk = q.shape
  group = h // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  ids = segment_ids
  doc = jnp.cumsum(jnp.concatenate([jnp.zeros((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1), axis=1)
  pos = jnp.arange(t)
  visible = doc[:, :, None] == doc[:, None, :]  # [B, T, S]
  if causal:
    visible &= pos[:, None] >= pos[None, :]
  if window is not None:
    visible &= pos[:, None] - pos[None, :] < window
  scores = jnp.einsum("bthk,bshk->bhts", q, k) * dk**-0.5
  weights = jax.nn.softmax(jnp.where(visible[:, None], scores, -jnp.inf), axis=-1)
  return jnp.einsum("bhts,bshv->bthv", weights, v)


def inputs(b, t, h, hkv, dk, dv, seed=0):
  rng = np.random.default_rng(seed)
  shapes = ((b, t, h, dk), (b, t, hkv, dk), (b, t, hkv, dv), (b, t, h, dv))
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in shapes)  # q, k, v, do


@functools.cache
def vjp_fn(fn, **options):
  """jit((q, k, v), segment_ids, do -> (o, grads of sum(o * do) w.r.t. q, k, v)) for fn(q, k, v, segment_ids)."""
  def run(args, segment_ids, do):
    o, pullback = jax.vjp(lambda *a: fn(*a, segment_ids, **options), *args)
    return o, pullback(do)

  return jax.jit(run)


def ours(q, k, v, segment_ids, **options):
  return softmax_attention(q, k, v, segment_ids=segment_ids, **options)


def test_packed_matches_golden_vectors():
  """Causal attention on documents of 20, 1, 43, 32 tokens against the reference library (K=32, V=24)."""
  data = np.load(GOLDEN)
  args = tuple(jnp.asarray(data[f"packed/attention/in/{n}"]) for n in "qkv")
  o, grads = vjp_fn(ours)(args, jnp.asarray(data["packed/segment_ids"]), jnp.asarray(data["packed/attention/in/do"]))
  assert rel_rmse(o, data["packed/attention/out/o"]) < 2e-3
  for name, grad in zip("qkv", grads):
    assert rel_rmse(grad, data[f"packed/attention/grad/{name}"]) < 5e-3, name


# (causal, window, H, Hkv, K, V); row 0: documents 1, 5, 1, 10, 7 with id 3 reused; row 1: one document
CASES = [(True, None, 4, 2, 8, 8), (True, 3, 2, 2, 8, 12), (False, None, 4, 1, 12, 8)]
SEGMENT_IDS = jnp.asarray([[3] + [1] * 5 + [3] + [0] * 10 + [2] * 7, [5] * 24], jnp.int32)


@pytest.mark.parametrize("case", CASES)
def test_matches_dense_reference(case):
  """o and every gradient equal the dense reference: own document only, causal / window, GQA, V != K."""
  causal, window, h, hkv, dk, dv = case
  q, k, v, do = inputs(2, 24, h, hkv, dk, dv)
  o, grads = vjp_fn(ours, causal=causal, window=window)((q, k, v), SEGMENT_IDS, do)
  ref_o, ref_grads = vjp_fn(reference, causal=causal, window=window)((q, k, v), SEGMENT_IDS, do)
  np.testing.assert_allclose(o, ref_o, rtol=1e-5, atol=1e-5)
  for grad, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)


def test_without_segment_ids_is_one_document():
  q, k, v, _ = inputs(2, 24, 2, 2, 8, 8)
  np.testing.assert_allclose(softmax_attention(q, k, v, window=5),
                             reference(q, k, v, jnp.zeros((2, 24), jnp.int32), True, 5), rtol=1e-5, atol=1e-5)


def test_bf16_inputs():
  """bf16 in, bf16 out, close to the fp32 computation on the same values (fp32 scores and softmax)."""
  q, k, v, _ = inputs(2, 24, 2, 2, 8, 8)
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  o16 = softmax_attention(q16, k16, v16, segment_ids=SEGMENT_IDS)
  assert o16.dtype == jnp.bfloat16
  ref = reference(*(x.astype(jnp.float32) for x in (q16, k16, v16)), SEGMENT_IDS, True, None)
  np.testing.assert_allclose(np.asarray(o16, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_choice_of_implementation():
  assert choose_implementation(None, "cpu", 256) == "xla"
  assert choose_implementation(None, "gpu", 256) == "xla"  # cuDNN only when asked
  assert choose_implementation("cudnn", "gpu", 100) == "cudnn"
  assert choose_implementation(None, "tpu", 256) == "splash"
  assert choose_implementation(None, "tpu", 200) == "xla"  # splash needs T % 128 == 0
  assert choose_implementation("xla", "tpu", 256) == "xla"
  with pytest.raises(ValueError, match="needs a TPU backend and T a multiple of 128"):
    choose_implementation("splash", "cpu", 256)
  with pytest.raises(ValueError, match="needs a TPU backend and T a multiple of 128"):
    choose_implementation("splash", "tpu", 200)
  with pytest.raises(ValueError, match="implementation must be one of"):
    choose_implementation("flash", "gpu", 256)


@pytest.mark.parametrize("sharded", [False, True], ids=["one_device", "shard_map"])
def test_splash_path_matches_reference(sharded):
  """The splash path (the TPU kernel, run by the Pallas interpreter on CPU): documents, sliding window, GQA,
  V != K; o and gradients. Sharded: under a (data 2, fsdp 2, tensor 2) mesh, inside shard_map."""
  b, t, window = 4, 256, 20
  q, k, v, do = inputs(b, t, 4, 2, 32, 24, seed=1)
  ids = jnp.asarray(np.sort(np.random.default_rng(1).integers(0, 6, (b, t)), axis=1), jnp.int32)
  doc = document_index(ids)

  def splash(q, k, v, doc):
    return splash_attention(q, k, v, doc, scale=32**-0.5, causal=True, window=window, interpret=True)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh) if sharded else contextlib.nullcontext():
    o, grads = vjp_fn(splash)((q, k, v), doc, do)
  ref_o, ref_grads = vjp_fn(reference, causal=True, window=window)((q, k, v), ids, do)
  np.testing.assert_allclose(o, ref_o, rtol=1e-4, atol=1e-4)
  for grad, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-4)


def test_rejects_bad_arguments():
  q, k, v, _ = inputs(2, 8, 4, 2, 8, 8)
  with pytest.raises(ValueError, match=r"segment_ids has shape \(2, 7\)"):
    softmax_attention(q, k, v, segment_ids=jnp.zeros((2, 7), jnp.int32))
  with pytest.raises(ValueError, match="segment_ids must be an integer array"):
    softmax_attention(q, k, v, segment_ids=jnp.zeros((2, 8)))
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    softmax_attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))
  with pytest.raises(ValueError, match="needs causal=True"):
    softmax_attention(q, k, v, causal=False, window=4)
  with pytest.raises(ValueError, match=r"k must be \[B, T, Hkv, K\]"):
    softmax_attention(q, k[:, :4], v)
  with pytest.raises(ValueError, match=r"v must be \[B, T, Hkv, V\]"):
    softmax_attention(q, k, v[:, :, :1])


@pytest.mark.parametrize("fn", [softmax_attention, splash_attention], ids=lambda fn: fn.__name__)
def test_docstring_example_runs(fn):
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, globs={"jnp": jnp, fn.__name__: fn}):
    runner.run(test)
  assert runner.tries > 0 and runner.failures == 0
