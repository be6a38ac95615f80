"""Linear-attention ops on packed rows (segment_ids): golden vectors, packed == each document alone in every
mode, segment_ids=None == one document, argument checks, the docstring examples."""

import doctest
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import linear_attention as la
from tests.test_linear_attention_ops import GATES, OPS, make_inputs, rel_rmse, vjp_fn

GOLDEN = pathlib.Path(__file__).parent / "golden" / "frontier.npz"
MODES = ("recurrent", "chunk", "parallel")
CHUNK = 16
T = 45  # not a multiple of CHUNK: the padded steps must stay neutral
# Document lengths and ids per row (chunk edges at 16 and 32). Row 0: boundaries exactly on both edges and a
# one-token document; row 1: a one-token first document, one crossing both edges, and an id used again
# after another document (still a new document); row 2: one document. Two random rows are appended.
PACKINGS = (
  ([16, 1, 15, 13], [3, 7, 0, 2]),
  ([1, 30, 14], [5, 9, 5]),
  ([45], [4]),
)
B = len(PACKINGS) + 2  # and two random rows
REFERENCE_ROWS = 16  # documents of a batch, each in its own row of the reference call


@functools.cache
def packed_vjp_fn(op: str, mode: str, chunk_size: int = CHUNK):
  """jit(args, segment_ids, do, dht -> (o, ht, grads of sum(o*do) + sum(ht*dht) w.r.t. every arg)); args end
  with s0."""
  fn = getattr(la, op)

  def run(args, segment_ids, do, dht):
    def forward(*args):
      return fn(*args[:-1], initial_state=args[-1], output_final_state=True, mode=mode, chunk_size=chunk_size,
                segment_ids=segment_ids)

    (o, ht), pullback = jax.vjp(forward, *args)
    return o, ht, pullback((do.astype(o.dtype), dht))

  return jax.jit(run)


def random_packing(rng: np.random.Generator) -> tuple[list[int], list[int]]:
  """Up to 4 documents of random lengths summing to T, with distinct random ids."""
  cuts = np.sort(rng.choice(np.arange(1, T), size=rng.integers(0, 4), replace=False))
  lengths = np.diff(np.concatenate([[0], cuts, [T]])).tolist()
  return lengths, rng.permutation(100)[: len(lengths)].tolist()


def segment_ids_and_spans(packings) -> tuple[jax.Array, list[tuple[int, int, int]]]:
  """segment_ids [B, T] and the (row, start, end) of every document."""
  ids, spans = np.zeros((len(packings), T), np.int32), []
  for row, (lengths, doc_ids) in enumerate(packings):
    start = 0
    for length, doc_id in zip(lengths, doc_ids):
      ids[row, start:start + length] = doc_id
      spans.append((row, start, start + length))
      start += length
  return jnp.asarray(ids), spans


def documents_alone(op: str, args, do, dht, spans):
  """o, ht and grads with every document run alone by the recurrent form without segment_ids, mapped back
  to the packed layout. A document sits at the start of its own row, followed by zeros (neutral: k = 0 and
  beta = 0 write nothing, a zero log gate decays nothing); it starts from s0 if it is its row's first
  document, else from zeros; the last document of a packed row gets that row's dht."""
  *steps, s0 = (np.asarray(x) for x in args)
  do, dht = np.asarray(do), np.asarray(dht)
  ref_steps = [np.zeros((REFERENCE_ROWS, *x.shape[1:]), np.float32) for x in steps]
  ref_s0, ref_do = np.zeros((REFERENCE_ROWS, *s0.shape[1:]), np.float32), np.zeros((REFERENCE_ROWS, *do.shape[1:]))
  ref_dht = np.zeros((REFERENCE_ROWS, *dht.shape[1:]), np.float32)
  for r, (row, start, end) in enumerate(spans):
    for ref, x in zip(ref_steps, steps):
      ref[r, :end - start] = x[row, start:end]
    ref_do[r, :end - start] = do[row, start:end]
    ref_s0[r] = s0[row] if start == 0 else 0.0
    ref_dht[r] = dht[row] if end == T else 0.0
  o_r, ht_r, grads_r = vjp_fn(op, "recurrent")(
    tuple(jnp.asarray(x) for x in (*ref_steps, ref_s0)), jnp.asarray(ref_do, jnp.float32), jnp.asarray(ref_dht))
  o, ht = np.zeros_like(do), np.zeros_like(dht)
  grads = [np.zeros_like(x) for x in (*steps, s0)]
  for r, (row, start, end) in enumerate(spans):
    o[row, start:end] = o_r[r, :end - start]
    for grad, grad_r in zip(grads[:-1], grads_r[:-1]):
      grad[row, start:end] = grad_r[r, :end - start]
    if start == 0:
      grads[-1][row] = grads_r[-1][r]
    if end == T:
      ht[row] = ht_r[r]
  return o, ht, grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_packed_matches_golden_vectors(op, mode):
  """Documents of 20, 1, 43, 32 tokens (chunk edges at 16, 32, 48, 64, 80: one boundary on an edge) against
  the reference library run document by document; tolerances as in the golden README."""
  data = np.load(GOLDEN)
  names = ("q", "k", "v", *GATES[op], "initial_state")
  args = tuple(jnp.asarray(data[f"packed/{op}/in/{n}"]) for n in names)
  do, dht = (jnp.asarray(data[f"packed/{op}/in/{n}"]) for n in ("do", "dht"))
  o, ht, grads = packed_vjp_fn(op, mode)(args, jnp.asarray(data["packed/segment_ids"]), do, dht)
  assert rel_rmse(o, data[f"packed/{op}/out/o"]) < 2e-3
  assert rel_rmse(ht, data[f"packed/{op}/out/ht"]) < 2e-3
  for name, grad in zip(names, grads):
    tol = 2e-2 if name in ("g", "gk", "beta") else 5e-3
    assert rel_rmse(grad, data[f"packed/{op}/grad/{name}"]) < tol, name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_packed_rows_equal_documents_alone(op, mode):
  """Every mode, on rows packed as in PACKINGS plus two random rows: o, final state and every gradient
  (initial_state included) equal each document run alone; all gradients finite."""
  rng = np.random.default_rng(OPS.index(op) * len(MODES) + MODES.index(mode))
  packings = (*PACKINGS, random_packing(rng), random_packing(rng))
  segment_ids, spans = segment_ids_and_spans(packings)
  args, do, dht = make_inputs(op, T, key=int(rng.integers(1000)), b=B)
  o, ht, grads = packed_vjp_fn(op, mode)(args, segment_ids, do, dht)
  ref_o, ref_ht, ref_grads = documents_alone(op, args, do, dht, spans)
  np.testing.assert_allclose(o, ref_o, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ht, ref_ht, rtol=1e-4, atol=1e-4)
  for i, (grad, ref) in enumerate(zip(grads, ref_grads)):
    assert bool(jnp.all(jnp.isfinite(grad))), f"grad {i}"
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=2e-4, err_msg=f"grad {i}")


@pytest.mark.parametrize("op", OPS)
def test_one_segment_equals_no_segment_ids(op):
  """segment_ids all equal (any id) == segment_ids=None: outputs, state, gradients."""
  args, do, dht = make_inputs(op, T, key=7, b=B)
  o, ht, grads = packed_vjp_fn(op, "chunk")(args, jnp.full((B, T), 9, jnp.int32), do, dht)
  ref = vjp_fn(op, "chunk")(args, do, dht)
  np.testing.assert_allclose(o, ref[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ht, ref[1], rtol=1e-5, atol=1e-5)
  for grad, grad_ref in zip(grads, ref[2]):
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_rejects_bad_segment_ids():
  args, _, _ = make_inputs("simple_gla", 8, b=2)
  with pytest.raises(ValueError, match=r"segment_ids has shape \(2, 7\), expected \[B, T\] = \(2, 8\)"):
    la.simple_gla(*args[:-1], segment_ids=jnp.zeros((2, 7), jnp.int32))
  with pytest.raises(ValueError, match="segment_ids must be an integer array"):
    la.simple_gla(*args[:-1], segment_ids=jnp.zeros((2, 8), jnp.float32))


@pytest.mark.parametrize("op", OPS)
def test_docstring_example_runs(op):
  """Each op's docstring ends with a runnable example; it runs and prints what it says."""
  fn = getattr(la, op)
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, op, globs={"jnp": jnp, op: fn}):
    runner.run(test)
  assert runner.tries > 0 and runner.failures == 0
