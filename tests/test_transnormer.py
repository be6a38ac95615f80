"""TransNormer: the block softmax (DiagAttention) and NormAttention against direct formulas; the experiment's
block pattern. Decoding, packed documents and causality are checked for every mixer by tests/test_mixers.py."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import transnormer
from layers.attention.block_softmax_attention import block_index, block_softmax_attention
from layers.attention.diag_attention import DiagAttention
from layers.context import LayerContext
from layers.linear_attention.mixers.norm_attention import NormAttention
from models.block_pattern import parse
from train import config as config_lib
from train import validate

B, T, H, K = 2, 19, 2, 8
CTX = LayerContext(d_model=16, n_heads=H, head_dim=K)
SEGMENT_IDS = np.array([[4] * 7 + [9] * 12, [1] * 3 + [2] * 9 + [3] * 7], np.int32)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def _document_positions(segment_ids: np.ndarray) -> np.ndarray:
  pos = np.zeros_like(segment_ids)
  for b in range(segment_ids.shape[0]):
    for t in range(1, segment_ids.shape[1]):
      pos[b, t] = 0 if segment_ids[b, t] != segment_ids[b, t - 1] else pos[b, t - 1] + 1
  return pos


def block_softmax_reference(q, k, v, block_size, segment_ids=None):
  """o_t = softmax over s <= t with the same document and the same position // block_size, token by token."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, dk = q.shape
  seg = np.zeros((b, t), np.int32) if segment_ids is None else np.asarray(segment_ids)
  pos = _document_positions(seg)
  o = np.zeros((*q.shape[:3], v.shape[-1]))
  for i in range(b):
    for j in range(t):
      keys = [s for s in range(j + 1) if seg[i, s] == seg[i, j] and pos[i, s] // block_size == pos[i, j] // block_size
              and all(seg[i, r] == seg[i, j] for r in range(s, j + 1))]
      for n in range(h):
        logits = np.array([q[i, j, n] @ k[i, s, n] for s in keys]) * dk**-0.5
        w = np.exp(logits - logits.max())
        o[i, j, n] = (w / w.sum()) @ v[i, keys, n]
  return o


def _qkv(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(key, (B, T, H, K)) for key in keys]


@pytest.mark.parametrize("block_size,packed", [(4, False), (4, True), (1, True), (32, False)])
def test_block_softmax_matches_the_direct_formula(block_size, packed):
  q, k, v = _qkv()
  seg = SEGMENT_IDS if packed else None
  o = block_softmax_attention(q, k, v, block_size=block_size, segment_ids=None if seg is None else jnp.asarray(seg))
  assert o.shape == (B, T, H, K) and o.dtype == jnp.float32
  assert _rel(o, block_softmax_reference(q, k, v, block_size, seg)) < 1e-5


def test_block_softmax_gradients_are_finite_and_local():
  q, k, v = _qkv(1)
  grads = jax.grad(lambda q, k, v: jnp.sum(block_softmax_attention(q, k, v, block_size=4)[:, 9]),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  gk = np.abs(np.asarray(grads[1])).sum(axis=(0, 2, 3))
  assert np.all(gk[8:10] > 0) and np.all(gk[:8] == 0) and np.all(gk[10:] == 0)  # token 9 sees its block 8..9


def test_block_softmax_refuses_bad_arguments():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="block_size"):
    block_softmax_attention(q, k, v, block_size=0)
  with pytest.raises(ValueError, match="segment_ids"):
    block_softmax_attention(q, k, v, block_size=4, segment_ids=jnp.zeros((B, T + 1), jnp.int32))


@pytest.mark.parametrize("fn", [block_softmax_attention, block_index])
def test_docstring_example_runs(fn):
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, globs={"jnp": jnp, fn.__name__: fn}):
    runner.run(test)
  assert runner.summarize(verbose=False).attempted > 0 and runner.summarize(verbose=False).failed == 0


def _weights(module, name) -> np.ndarray:
  return np.asarray(getattr(module, name).kernel[...], np.float64)


@functools.cache
def _x():
  return jax.random.normal(jax.random.key(2), (B, T, CTX.d_model))


def test_diag_attention_is_the_block_softmax_of_its_projections():
  layer = DiagAttention(CTX, block_size=4, rngs=nnx.Rngs(0))
  x = np.asarray(_x(), np.float64)
  q, k, v = (np.einsum("btd,de->bte", x, _weights(layer, n)).reshape(B, T, H, K) for n in ("q", "k", "v"))
  want = block_softmax_reference(q, k, v, 4).reshape(B, T, H * K) @ _weights(layer, "o")
  assert _rel(layer(_x()), want) < 1e-5


@pytest.mark.parametrize("mode,feature_map", [("chunk", "elu+1"), ("recurrent", "elu+1"), ("chunk", "elu")])
def test_norm_attention_matches_the_direct_formula(mode, feature_map):
  """o_t = SRMSNorm(sum_{s<=t} (phi(q_t) . phi(k_s)) v_s) over all heads, no scale, then W_o."""
  layer = NormAttention(CTX, feature_map=feature_map, mode=mode, chunk_size=8, rngs=nnx.Rngs(0))
  x = np.asarray(_x(), np.float64)
  phi = {"elu+1": lambda z: np.where(z > 0, z + 1, np.exp(z)), "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1)}
  q, k = (phi[feature_map](np.einsum("btd,de->bte", x, _weights(layer, n)).reshape(B, T, H, K))
          for n in ("q_proj", "k_proj"))
  v = np.einsum("btd,de->bte", x, _weights(layer, "v_proj")).reshape(B, T, H, K)
  scores = np.einsum("bthk,bshk->bhts", q, k) * np.tril(np.ones((T, T)))
  o = np.einsum("bhts,bshv->bthv", scores, v).reshape(B, T, H * K)
  o = o / np.sqrt(np.mean(o**2, axis=-1, keepdims=True) + 1e-6)
  assert _rel(layer(_x()), o @ _weights(layer, "o_proj")) < 1e-5


def test_transnormer_puts_diag_attention_in_the_first_half():
  assert [m for m, _ in parse(transnormer.pattern("transnormer", 6))] == ["diag_attention"] * 3 + ["norm_attention"] * 3
  c = transnormer.get_config(None)
  assert (c.model.d_model, c.model.n_heads, c.model.d_ff, c.data.seq_len) == (512, 8, 1365, 512)
  assert c.model.options.diag_attention.block_size == 64 and len(parse(c.model.blocks)) == 6
  assert transnormer.get_config("local").model.options.diag_attention.block_size == 16
  with pytest.raises(ValueError, match="unknown variant"):
    transnormer.pattern("cosformer", 6)


def test_transnormer_variants_validate():
  for variant in transnormer.VARIANTS:
    for local in ("local,", ""):
      validate.validate(config_lib.load(f"experiments/transnormer.py:{local}variant={variant}"), num_devices=1)
