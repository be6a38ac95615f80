"""Every registered token mixer against the mixer contract of layers/registry.py.

decode == forward (token by token and chunked prefill); packed documents == each document run alone
(outputs and gradients); decoding packed rows == their forward; decoding after a packed prefill ==
decoding each document alone; a later token never changes an earlier logit of an LM. Parametrised
over registry.names("mixer"), so a new mixer is covered without editing this file (and the example
mixer of RecurrentMixer's docstring, so the docs stay true).
"""

import doctest
import functools
import inspect
import re
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry, segments
from layers.context import LayerContext
from layers.kan.karat import fourier_ka_operator
from layers.linear_attention.mixers.short_conv import short_causal_conv
from layers.segments import document_positions
from models.lm import LM
from tests.foundation_configs import tiny_lm

B, T, D = 4, 21, 32
CHUNK = 8  # T spans 3 chunks with padding, so chunk forms really chunk
PREFILL = 13  # a chunked prefill of 13 tokens, then token by token
# Documents per row (lengths sum to T): length-1 documents, documents crossing chunk boundaries and the
# prefill split, boundaries exactly at chunk starts (8, 16) and at the split (13), a single document.
LENGTHS = ((5, 1, 11, 4), (1, 7, 8, 5), (21,), (3, 10, 8))
IDS = (7, 3, 9, 2, 5)  # the ids of each row's documents, in order: equal and unequal neighbours in value

# Options only where a mixer needs small shapes, an option to be causal (KArAt is bidirectional by
# default), or has an optional branch the default leaves off (switched on here; off is a subset).
OPTIONS = {
  "karat": {"max_len": T, "causal": True},
  "mamba2": {"state_size": 8},
  "mom": {"n_memories": 3, "top_k": 2},
  "gla": {"conv_size": 4},
  "linear_attention": {"feature_map": "hedgehog", "normalize": True},
  "delta_net": {"allow_neg_eigval": True},
}
# A branch that changes what decoding must mask: name -> (registry name, options over OPTIONS).
VARIANTS = {"attention[window]": ("attention", {"window": 5})}
CASES = {**{name: (name, {}) for name in registry.names("mixer")}, **VARIANTS}


def _options(kind: str, extra: dict) -> dict:
  options = {**OPTIONS.get(kind, {}), **extra}
  ctor = registry.lookup("mixer", kind)
  if "chunk_size" in inspect.signature(ctor.__init__ if inspect.isclass(ctor) else ctor).parameters:
    options["chunk_size"] = CHUNK
  return options


def _ctx(dtype=jnp.float32) -> LayerContext:
  return LayerContext(d_model=D, n_heads=2, n_kv_heads=2, head_dim=16, dtype=dtype)


def build(case: str, dtype=jnp.float32, seed: int = 0):
  """The mixer of test case `case` (a registry name or a VARIANTS key)."""
  kind, extra = CASES[case]
  return registry.build("mixer", kind, _ctx(dtype), rngs=nnx.Rngs(seed), **_options(kind, extra))


def example_mixer() -> type:
  """The minimal example mixer of RecurrentMixer's docstring, executed as written there."""
  from layers.linear_attention.mixers import recurrent_mixer

  doc = recurrent_mixer.__doc__
  code = textwrap.dedent(re.search(r"\n(    class .*?)\n\S", doc, re.S).group(1))
  namespace = dict(vars(recurrent_mixer))
  exec("from layers.linear_attention.ops import linear_attn\n" + code, namespace)
  return namespace["SumMixer"]


def _documents() -> tuple[np.ndarray, list[tuple[int, int, int]]]:
  """segment_ids [B, T] and the documents (row, start, end)."""
  seg, docs = np.zeros((B, T), np.int32), []
  for b, lengths in enumerate(LENGTHS):
    start = 0
    for j, n in enumerate(lengths):
      seg[b, start : start + n] = IDS[j]
      docs.append((b, start, start + n))
      start += n
  return seg, docs


SEGMENT_IDS, DOCS = _documents()


def _alone(a: jax.Array) -> jax.Array:
  """[B, T, ...] -> [N, T, ...]: each document left-aligned in a row of its own, zeros after it."""
  out = jnp.zeros((len(DOCS), *a.shape[1:]), a.dtype)
  for n, (b, s, e) in enumerate(DOCS):
    out = out.at[n, : e - s].set(a[b, s:e])
  return out


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def decode_steps(model, x, cache, start: int, segment_ids=None):
  """Feed x [B, S, D] one token at a time through decode (lax.scan) from stream index `start`."""

  def step(cache, inp):
    x_t, seg_t, t = inp
    y, cache = model.decode(x_t[:, None], cache, t, segment_ids=None if seg_t is None else seg_t[:, None])
    return cache, y[:, 0]

  steps = jnp.arange(x.shape[1], dtype=jnp.int32) + start
  seg = None if segment_ids is None else jnp.moveaxis(segment_ids, 1, 0)
  cache, ys = jax.lax.scan(step, cache, (jnp.moveaxis(x, 1, 0), seg, steps))
  return jnp.moveaxis(ys, 0, 1), cache


def _prefill_then_steps(model, x, segment_ids):
  """A chunked prefill of PREFILL tokens, then the rest token by token."""
  cache = model.init_cache(x.shape[0], x.shape[1])
  y1, cache = model.decode(x[:, :PREFILL], cache, jnp.int32(0), segment_ids=segment_ids[:, :PREFILL])
  y2, cache = decode_steps(model, x[:, PREFILL:], cache, PREFILL, segment_ids[:, PREFILL:])
  return jnp.concatenate([y1, y2], axis=1), cache


def _inputs():
  x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
  w = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float32)  # loss weights: loss = sum(w * y)
  return x, w


@functools.cache
def run(case: str) -> dict:
  """One jitted call per mixer, shared by the tests below (NumPy arrays of everything they compare).

  Rows are batched to keep compiles few: unpacked rows and the documents alone (no segment_ids) in one
  forward / backward and one decode scan; packed rows and one-document rows (segment_ids) in another.
  """
  graphdef, params = nnx.split(example_mixer()(_ctx(), chunk_size=CHUNK, rngs=nnx.Rngs(0)) if case == "example"
                               else build(case))
  n = len(DOCS)
  packed_ids = jnp.concatenate([jnp.asarray(SEGMENT_IDS), jnp.full((B, T), 3, jnp.int32)])  # [2B, T]

  @jax.jit
  def go(params, x, w):
    model = nnx.merge(graphdef, params)

    def loss(p, x, w, segment_ids=None):
      y = nnx.merge(graphdef, p)(x, segment_ids=segment_ids)
      return jnp.sum(w * y), y

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    rows, row_w = jnp.concatenate([x, _alone(x)]), jnp.concatenate([jnp.zeros_like(w), _alone(w)])
    (gp_alone, gx_alone), y = grad(params, rows, row_w)  # the loss counts the documents alone only
    full, alone = y[:B], y[B:]
    (gp_packed, gx_packed), y = grad(params, jnp.concatenate([x, x]), jnp.concatenate([w, jnp.zeros_like(w)]),
                                     packed_ids)
    packed, one_document = y[:B], y[B:]
    stepped, _ = decode_steps(model, rows, model.init_cache(B + n, T), 0)
    packed_stepped, cache = decode_steps(model, x, model.init_cache(B, T), 0, packed_ids[:B])
    packed_prefilled, cache_prefill = _prefill_then_steps(model, x, packed_ids[:B])
    return dict(full=full, grads=gp_packed, stepped=stepped[:B], cache=cache, cache_prefill=cache_prefill,
                packed=packed, gp_packed=gp_packed, gx_packed=gx_packed[:B],
                alone=alone, gp_alone=gp_alone, gx_alone=gx_alone[B:], packed_stepped=packed_stepped,
                packed_prefilled=packed_prefilled, alone_stepped=stepped[B:], one_document=one_document)

  return jax.device_get(go(params, *_inputs()))


NAMES = [*CASES, "example"]


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_forward(name):
  """Token by token (no documents; packed rows), and a chunked prefill then token by token (packed rows)."""
  r = run(name)
  full = r["full"]
  assert full.shape == (B, T, D) and full.dtype == np.float32 and np.all(np.isfinite(full))
  assert _rel(r["stepped"], full) < 1e-5, _rel(r["stepped"], full)
  assert _rel(r["packed_stepped"], r["packed"]) < 1e-5, _rel(r["packed_stepped"], r["packed"])
  assert _rel(r["packed_prefilled"], r["packed"]) < 1e-5, _rel(r["packed_prefilled"], r["packed"])
  # Chunked prefill and one-step decoding end in the same cache (states, conv buffers, KV slots, cursor).
  chex.assert_trees_all_close(r["cache"], r["cache_prefill"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_packed_documents_equal_documents_alone(name):
  r = run(name)
  # Segment ids that put every row in one document change nothing.
  np.testing.assert_allclose(r["one_document"], r["full"], rtol=1e-5, atol=1e-6)
  for n, (b, s, e) in enumerate(DOCS):
    np.testing.assert_allclose(r["packed"][b, s:e], r["alone"][n, : e - s], rtol=1e-4, atol=1e-5,
                               err_msg=f"document {n} (row {b}, tokens {s}:{e})")
    np.testing.assert_allclose(r["gx_packed"][b, s:e], r["gx_alone"][n, : e - s], rtol=1e-4, atol=1e-5,
                               err_msg=f"input gradient, document {n} (row {b}, tokens {s}:{e})")
  # sum(w * y) over packed rows is the sum of the per-document losses, so the parameter gradients agree.
  chex.assert_trees_all_close(r["gp_packed"], r["gp_alone"], rtol=1e-4, atol=1e-5)
  assert not np.allclose(r["packed"], r["full"], atol=1e-3)  # the documents did change the result


@pytest.mark.parametrize("name", NAMES)
def test_decode_after_packed_prefill_equals_document_alone(name):
  """After a chunked prefill of packed rows, every decoded token equals decoding its document alone:
  the document the prompt ends in continues as if it alone had been prefilled; the next one starts clean."""
  r = run(name)
  for n, (b, s, e) in enumerate(DOCS):
    first = max(s, PREFILL)
    if first < e:
      np.testing.assert_allclose(r["packed_prefilled"][b, first:e], r["alone_stepped"][n, first - s : e - s],
                                 rtol=1e-4, atol=1e-5, err_msg=f"document {n} (row {b}, tokens {s}:{e})")


def test_decode_documents_count_on_from_the_cursor():
  d = segments.decode_documents(segments.init_cursor(2), 4, jnp.array([[1, 1, 2, 2], [5, 5, 5, 5]]), None)
  np.testing.assert_array_equal(d.positions, [[0, 1, 0, 1], [0, 1, 2, 3]])
  np.testing.assert_array_equal(d.reset, [True, True])
  np.testing.assert_array_equal(d.documents, [[1, 1, 2, 2], [1, 1, 1, 1]])
  d = segments.decode_documents(d.cursor, 2, jnp.array([[2, 3], [6, 6]]), None)  # row 0 continues, row 1 not
  np.testing.assert_array_equal(d.positions, [[2, 0], [0, 1]])
  np.testing.assert_array_equal(d.reset, [False, True])
  np.testing.assert_array_equal(d.documents, [[2, 3], [2, 2]])
  d = segments.decode_documents(d.cursor, 1, None, None)  # no ids: the tokens continue the cursor's documents
  np.testing.assert_array_equal(d.positions, [[1], [2]])
  assert d.reset is None
  np.testing.assert_array_equal(d.cursor["segment"], [3, 6])
  state = jnp.ones((2, 3))
  np.testing.assert_array_equal(segments.restart(state, jnp.array([False, True])), [[1, 1, 1], [0, 0, 0]])


@pytest.mark.parametrize("fn", [short_causal_conv, fourier_ka_operator, document_positions])
def test_docstring_example_runs(fn):
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, globs={"jnp": jnp, fn.__name__: fn}):
    runner.run(test)
  assert runner.summarize(verbose=False).attempted > 0 and runner.summarize(verbose=False).failed == 0


@functools.cache
def _lm(case: str):
  kind, extra = CASES[case]
  cfg = tiny_lm().model
  cfg.update(dict(vocab_size=32, d_model=D, n_heads=2, n_kv_heads=2, blocks="(mixer, mlp)"))
  cfg.options.mixer = dict(layer=kind, **_options(kind, extra))
  return LM(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", list(registry.names("mixer")))
def test_lm_is_causal(name):
  """Changing the tokens from position 7 on never changes an earlier logit (and does change later ones)."""
  model = _lm(name)
  a = jax.random.randint(jax.random.key(0), (2, 12), 0, 32)
  b = a.at[:, 7:].set((a[:, 7:] + 1) % 32)
  la, lb = nnx.jit(lambda m, t: m(t))(model, jnp.stack([a, b]).reshape(4, 12)).reshape(2, 2, 12, 32)
  np.testing.assert_allclose(la[:, :7], lb[:, :7], rtol=1e-5, atol=1e-6)
  assert not np.allclose(la[:, 7:], lb[:, 7:])
