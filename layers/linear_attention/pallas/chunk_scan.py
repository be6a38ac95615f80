"""The chunk scan both Pallas kernels share: a per-chunk step run sequentially over chunks, forward and backward.

A kernel op (GLA, gated delta rule) is one `step(s, xs, masks) -> (o, s_next)` on one chunk of one (batch, head)
row: s [K, V] fp32 the state entering the chunk, xs its per-step inputs [C, F] (differentiated), masks its document
masks [C, 1] (not). The forward kernel runs the step over the N chunks of a row carrying the state and stores the
state entering each chunk; the backward kernel runs over the chunks in reverse carrying dL/dS, recomputes each
chunk from its stored entering state and takes the step's VJP (jax.vjp of the step, traced inside the kernel: the
chunk math is written with 2-D matmuls, elementwise ops and reductions only, so its VJP is too). Only chunk-boundary
states are stored, as in the reference GPU library. `jax.custom_vjp` ties the two kernels together.

The grid differs by backend (triton_scan.py: one program per row, a loop over chunks; mosaic_scan.py: a (row,
chunk) grid with the state in VMEM); the step, the VJP and the layout are shared here.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from layers.linear_attention.ops import common
from layers.linear_attention.pallas import mosaic_scan, triton_scan

BACKENDS = ("triton", "mosaic")
Step = Callable[[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]], tuple[jax.Array, jax.Array]]


def chunk_scan(
  step: Step, xs: tuple[jax.Array, ...], masks: tuple[jax.Array, ...], s0: jax.Array, *, chunk: int,
  backend: str | None = None, interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Run `step` over the chunks of every row; returns (o [R, T, V], final state [R, K, V]).

  xs, masks [R, T, F] fp32 (R = batch x heads rows, T a multiple of `chunk`); s0 [R, K, V] fp32.
  backend None picks by platform at lowering: Triton on GPU, Mosaic on TPU, the Mosaic kernel in Pallas
  interpret mode elsewhere (CPU: correct, slow); "triton" | "mosaic" force one (with `interpret` on CPU).

  Example (plain causal linear attention as a step: S_t = S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t):
    >>> def step(s, xs, masks):
    ...   q, k, v = xs
    ...   row, col = index_grid(q.shape[0])
    ...   return dot(q, s) + dot(jnp.where(row >= col, dot(q, k, (1, 1)), 0.0), v), s + dot(k, v, (0, 0))
    >>> x, s0 = jnp.ones((2, 32, 16)), jnp.zeros((2, 16, 16))
    >>> o, final = chunk_scan(step, (x, x, x), (), s0, chunk=16, backend="mosaic", interpret=True)
    >>> o.shape, float(o[0, 31, 0]), float(final[0, 0, 0])
    ((2, 32, 16), 512.0, 32.0)
  """
  if backend not in (None, *BACKENDS):
    raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
  return _scan(step, chunk, backend, interpret, xs, masks, s0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _scan(step, chunk, backend, interpret, xs, masks, s0):
  o, _, final = _dispatch("forward", backend, interpret, step, chunk, xs, masks, s0, store_states=False)
  return o, final


def _scan_fwd(step, chunk, backend, interpret, xs, masks, s0):
  o, states, final = _dispatch("forward", backend, interpret, step, chunk, xs, masks, s0, store_states=True)
  return (o, final), (xs, masks, states)


def _scan_bwd(step, chunk, backend, interpret, res, cotangents):
  xs, masks, states = res
  do, dfinal = cotangents
  dxs, ds0 = _dispatch("backward", backend, interpret, step, chunk, xs, masks, states, do, dfinal)
  return dxs, tuple(jnp.zeros_like(m) for m in masks), ds0


_scan.defvjp(_scan_fwd, _scan_bwd)


def _dispatch(direction: str, backend: str | None, interpret: bool, step: Step, chunk: int, *args, **static):
  """Run the forward or backward kernel of `backend` (None: by platform). static: the forward's store_states
  (only the VJP's forward stores the chunk-entry states)."""
  modules = {"triton": triton_scan, "mosaic": mosaic_scan}

  def kernel(name, interp):
    return functools.partial(getattr(modules[name], direction), step, chunk, _CORES[direction], interpret=interp,
                             **static)

  if backend is not None:
    return kernel(backend, interpret)(*args)
  return jax.lax.platform_dependent(
    *args, cuda=kernel("triton", False), rocm=kernel("triton", False), tpu=kernel("mosaic", False),
    default=kernel("mosaic", True))


def _forward_core(step: Step, s, xs, masks, *_):
  """One chunk forward: (o [C, V], s_next [K, V])."""
  return step(s, xs, masks)


def _backward_core(step: Step, s, xs, masks, do, ds_next):
  """One chunk backward from its entering state: (dL/ds [K, V], dL/dxs)."""
  _, vjp = jax.vjp(lambda s_, xs_: step(s_, xs_, masks), s, xs)
  return vjp((do, ds_next))


_CORES = {"forward": _forward_core, "backward": _backward_core}


# In-kernel helpers: 2-D only (Mosaic and Triton lower these), fp32 everywhere.

def dot(a: jax.Array, b: jax.Array, contract: tuple[int, int] = (1, 0)) -> jax.Array:
  """Matmul in fp32 at full precision; contract (1, 0): a @ b, (1, 1): a @ bᵀ, (0, 0): aᵀ @ b."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                             precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def index_grid(n: int) -> tuple[jax.Array, jax.Array]:
  """(row, column) indices [n, n] int32."""
  return jax.lax.broadcasted_iota(jnp.int32, (n, n), 0), jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)


def to_row(x: jax.Array) -> jax.Array:
  """[n, 1] -> [1, n] through a diagonal mask (no 1-D vectors or transposes in the kernel)."""
  row, col = index_grid(x.shape[0])
  return jnp.sum(jnp.where(row == col, x, 0.0), axis=0, keepdims=True)


def to_column(x: jax.Array) -> jax.Array:
  """[1, n] -> [n, 1]."""
  row, col = index_grid(x.shape[1])
  return jnp.sum(jnp.where(row == col, x, 0.0), axis=1, keepdims=True)


def chunk_documents(doc: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """In-kernel document masks of one chunk from doc, first [C, 1] (see `document_masks`).

  Returns (same [C, C] bool: pairs in one document, first [C, 1]: steps the entering state reaches,
  last [C, 1]: steps of the chunk's last document, carry [1, 1]: 1 where no document starts in the chunk).
  """
  same = doc == to_row(doc)
  last = (doc == jnp.max(doc, axis=0, keepdims=True)).astype(jnp.float32)
  return same, first, last, jnp.min(first, axis=0, keepdims=True)


def masked_exp(diff: jax.Array, keep: jax.Array) -> jax.Array:
  """exp(diff) where keep, exactly 0 elsewhere (masked entries never reach exp)."""
  return jnp.exp(jnp.where(keep, diff, -jnp.inf))


# Layout: the kernels see rows [R = B*H, T, F].

def to_rows(x: jax.Array) -> jax.Array:
  """[B, T, H, F] or [B, T, H] -> [B*H, T, F] (F = 1 for per-head scalars)."""
  x = x if x.ndim == 4 else x[..., None]
  b, t, h, f = x.shape
  return jnp.moveaxis(x, 2, 1).reshape(b * h, t, f)


def from_rows(x: jax.Array, heads: int) -> jax.Array:
  """[B*H, T, F] -> [B, T, H, F]."""
  r, t, f = x.shape
  return jnp.moveaxis(x.reshape(r // heads, heads, t, f), 1, 2)


def document_masks(
  docs: common.ChunkDocuments, batch: int, t: int, heads: int, chunk: int,
) -> tuple[jax.Array, jax.Array]:
  """Per-step masks for kernel chunks of `chunk` steps from the op's ChunkDocuments (any chunk length dividing T).

  Returns (doc: document index, first: 1 where the step continues the document of the state entering its kernel
  chunk), each [B*H, T, 1] fp32.
  """
  b, size = batch, docs.doc.shape[-1]
  doc = jnp.broadcast_to(docs.doc, (b, 1, t // size, size)).reshape(b, t)
  first = common.chunk_documents(doc, t // chunk, chunk).first.reshape(b, 1, t)  # [B, 1, T]
  rows = [jnp.broadcast_to(m.reshape(b, 1, t), (b, heads, t)).reshape(b * heads, t, 1).astype(jnp.float32)
          for m in (doc, first)]
  return rows[0], rows[1]


IMPLEMENTATIONS = ("xla", "pallas", "cpu")


def check_implementation(implementation: str, *, mode: str, chunk_size: int, dk: int, dv: int,
                         available: tuple[str, ...] = ("xla", "pallas")) -> None:
  """Reject an implementation the op cannot run with these arguments, before tracing. available: the op's
  implementations ("cpu": a C++ kernel of its recurrent form, `layers/cpu_kernels`)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if implementation not in available:
    raise ValueError(f"implementation={implementation!r} is not implemented for this op (it has {available})")
  if implementation == "xla":
    return
  if implementation == "cpu":
    if mode != "recurrent":
      raise ValueError(f"implementation='cpu' is the recurrent form as a C++ kernel: use mode='recurrent' "
                       f"(got mode={mode!r})")
    if jax.default_backend() != "cpu":
      raise ValueError(f"implementation='cpu' runs on the CPU backend, not {jax.default_backend()!r}; "
                       "use implementation='xla' or 'pallas'")
    return
  if mode != "chunk":
    raise ValueError(f"implementation='pallas' is the chunk form: use mode='chunk' (got mode={mode!r}) "
                     "or implementation='xla'")
  if chunk_size < 16 or chunk_size % 16:
    raise ValueError(f"implementation='pallas' needs chunk_size a multiple of 16 (got {chunk_size})")
  for name, d in (("K (q/k head dim)", dk), ("V (v head dim)", dv)):
    if d < 16 or d & (d - 1):
      raise ValueError(f"implementation='pallas' needs {name} a power of two >= 16 (Triton block shapes), got {d}; "
                       "use implementation='xla'")
