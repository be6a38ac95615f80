"""Softmax attention as a pure function: causal or bidirectional, sliding window, GQA, packed documents.

How the implementation is chosen (`implementation=`):
  "xla"     jax.nn.dot_product_attention's XLA path: fp32 scores [B, H, T, T], fp32 softmax. Runs everywhere.
            (In JAX 0.10 that function takes no segment ids, only a boolean `mask`, so documents go in as
            a [B, 1, T, T] mask; causality and the window stay its own arguments.)
  "cudnn"   jax.nn.dot_product_attention(implementation="cudnn"): cuDNN flash attention on NVIDIA GPUs
            (JAX raises if the shapes / dtypes are unsupported). With segment_ids the document mask goes
            in as a dense [B, 1, T, T] bias, so memory grows as T² again.
  "splash"  Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention), TPU only: segment
            ids and the causal / local mask are applied blockwise and fully masked blocks are skipped.
            Needs T a multiple of 128 (blocks of 512, 256 or 128). Under a mesh set with `jax.set_mesh`
            it runs inside shard_map: batch split over every mesh axis but "tensor" (when B divides),
            heads over "tensor" (when both H and Hkv divide), otherwise that dimension is not split.
  None      "splash" when the default backend is TPU and T % 128 == 0, else "xla". cuDNN only when asked
            (as jax.nn.dot_product_attention does).
Segment ids follow layers.segments: a change of id starts a new document; a token attends only to
tokens of its own document (and, with window=W, to the last W positions, itself included).
"""

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from layers import segments

IMPLEMENTATIONS = (None, "xla", "cudnn", "splash")
SPLASH_BLOCK = 128  # T must be a multiple of this for splash attention
_TENSOR_AXIS = "tensor"


def softmax_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  scale: float | None = None,
  causal: bool = True,
  window: int | None = None,
  segment_ids: jax.Array | None = None,
  implementation: str | None = None,
) -> jax.Array:
  """o_t = sum_s softmax_s(scale q_t . k_s) v_s over the positions s that token t may see.

  q [B, T, H, K]; k [B, T, Hkv, K]; v [B, T, Hkv, V] with H a multiple of Hkv (GQA: query head i reads
  kv head i // (H / Hkv)); segment_ids [B, T] int (packed documents: t sees only its own document).
  causal: s <= t; window=W (needs causal): also s > t - W, i.e. the last W positions, itself included.
  scale defaults to K**-0.5. Scores and softmax in fp32 whatever the input dtype; returns o [B, T, H, V]
  in q's dtype. implementation: None, "xla", "cudnn" or "splash" (see the module docstring).

  Example (two documents in one row; the second never sees the first):
    >>> q = k = v = jnp.ones((1, 4, 2, 8)).at[:, :2].set(2.0)
    >>> o = softmax_attention(q, k, v, segment_ids=jnp.array([[0, 0, 1, 1]]))
    >>> o.shape, float(o[0, 2, 0, 0])
    ((1, 4, 2, 8), 1.0)
  """
  _check(q, k, v, causal, window, segment_ids)
  impl = choose_implementation(implementation, jax.default_backend(), q.shape[1])
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  doc = None if segment_ids is None else segments.document_index(segment_ids)
  if impl == "splash":
    return splash_attention(q, k, v, doc, scale=scale, causal=causal, window=window)
  return _dot_product_attention(q, k, v, doc, scale=scale, causal=causal, window=window, implementation=impl)


def choose_implementation(implementation: str | None, backend: str, t: int) -> str:
  """The implementation softmax_attention runs for `implementation` on `backend` at sequence length t."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  splash_ok = backend == "tpu" and t % SPLASH_BLOCK == 0
  if implementation == "splash" and not splash_ok:
    raise ValueError(f"implementation='splash' needs a TPU backend and T a multiple of {SPLASH_BLOCK} "
                     f"(backend {backend!r}, T={t}); use implementation=None or 'xla'")
  if implementation is None:
    return "splash" if splash_ok else "xla"
  return implementation


def _check(q, k, v, causal, window, segment_ids) -> None:
  if q.ndim != 4:
    raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
  b, t, h, dk = q.shape
  if k.ndim != 4 or k.shape[:2] != (b, t) or k.shape[3] != dk:
    raise ValueError(f"k must be [B, T, Hkv, K] = [{b}, {t}, Hkv, {dk}], got shape {tuple(k.shape)}")
  if v.ndim != 4 or v.shape[:3] != k.shape[:3]:
    raise ValueError(f"v must be [B, T, Hkv, V] = [{b}, {t}, {k.shape[2]}, V], got shape {tuple(v.shape)}")
  if h % k.shape[2]:
    raise ValueError(f"query heads H={h} must be a multiple of key/value heads Hkv={k.shape[2]} (GQA)")
  if window is not None and (not causal or window < 1):
    raise ValueError(f"window={window} needs causal=True and window >= 1 (the last W positions, itself included)")
  if segment_ids is not None:
    segments.check_segment_ids(segment_ids, (b, t))


def _dot_product_attention(q, k, v, doc, *, scale, causal, window, implementation):
  """jax.nn.dot_product_attention; V != K is zero-padded to one head size (padding adds 0 to every score)."""
  dk, dv = q.shape[-1], v.shape[-1]
  width = max(dk, dv)

  def pad(x):
    return jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])

  mask = None if doc is None else (doc[:, :, None] == doc[:, None, :])[:, None]  # [B, 1, T, T]
  o = jax.nn.dot_product_attention(
    pad(q), pad(k), pad(v), mask=mask, scale=scale, is_causal=causal,
    local_window_size=None if window is None else (window - 1, 0), implementation=implementation)
  return o[..., :dv]


def splash_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, doc: jax.Array | None, *, scale: float, causal: bool,
  window: int | None, interpret: bool = False,
) -> jax.Array:
  """Splash attention (the TPU kernel) for softmax_attention's "splash" path; returns o [B, T, H, V].

  q [B, T, H, K], k [B, T, Hkv, K], v [B, T, Hkv, V] with T a multiple of 128; doc [B, T] int32 document
  indices (layers.segments.document_index: the kernel masks by equality) or None. interpret=True runs
  the same kernel through the Pallas interpreter on any backend (slow; for tests).

  Example (on CPU, through the interpreter):
    >>> q = k = v = jnp.ones((1, 128, 2, 8))
    >>> splash_attention(q, k, v, None, scale=8**-0.5, causal=True, window=None, interpret=True).shape
    (1, 128, 2, 8)
  """
  b, t, h, _ = q.shape
  hkv = k.shape[2]
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)

  def attend(q, k, v, *doc):  # local shards [b, T, h, *]
    heads = q.shape[2]
    if not causal:
      mask = splash.FullMask((t, t))
    elif window is None:
      mask = splash.CausalMask((t, t))
    else:
      mask = splash.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    block = next(size for size in (512, 256, SPLASH_BLOCK) if t % size == 0)
    sizes = splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block, block_kv_dkv=block,
      block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
    ids = splash.SegmentIds(doc[0], doc[0]) if doc else None
    o = jax.vmap(kernel)(*(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), segment_ids=ids)  # [b, h, T, V]
    return jnp.swapaxes(o, 1, 2)

  args = (q, k, v) if doc is None else (q, k, v, doc)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return attend(*args)
  batch_axes = tuple(a for a in mesh.axis_names if a != _TENSOR_AXIS)
  batch = batch_axes if b % math.prod(mesh.shape[a] for a in batch_axes) == 0 else None
  tp = mesh.shape.get(_TENSOR_AXIS, 1)
  heads = _TENSOR_AXIS if tp > 1 and h % tp == 0 and hkv % tp == 0 else None
  spec = P(batch, None, heads, None)
  specs = (spec, spec, spec, P(batch, None))[:len(args)]
  return jax.shard_map(attend, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(*args)
