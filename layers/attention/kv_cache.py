"""The key/value cache of the attention-like mixers (softmax attention, KArAt) for decoding.

Slot s holds the key and value of the s-th token fed (`pos` is the slot of a call's first token),
the running number of its document and its position in that document; a query sees the slots up to
its own that belong to its document (and, with a sliding window, the last `window` of them). So a
prompt packed with several documents leaves earlier documents in the cache but out of sight.
"""

import jax
import jax.numpy as jnp

from layers import segments


def init_kv_cache(batch_size: int, max_len: int, n_heads: int, head_dim: int, dtype) -> dict:
  """Zero keys / values [B, max_len, N, H] in `dtype`, slot documents / positions [B, max_len], a cursor."""
  shape = (batch_size, max_len, n_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "document": jnp.full(shape[:2], -1, jnp.int32), "position": jnp.zeros(shape[:2], jnp.int32),
          "cursor": segments.init_cursor(batch_size)}


def append(cache: dict, k: jax.Array, v: jax.Array, pos: jax.Array,
           docs: segments.DecodeDocuments, window: int | None = None) -> tuple[dict, jax.Array]:
  """Write T new keys / values [B, T, N, H] at slots pos..pos+T-1.

  Returns the new cache and the mask [B, 1, T, max_len] of the slots each new token sees
  (broadcasts over heads, as `jax.nn.dot_product_attention` takes it).
  """
  put = lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), pos, axis=1)  # noqa: E731
  cache = {"k": put(cache["k"], k), "v": put(cache["v"], v), "document": put(cache["document"], docs.documents),
           "position": put(cache["position"], docs.positions), "cursor": docs.cursor}
  slot = jnp.arange(cache["k"].shape[1], dtype=jnp.int32)  # [S]
  query_slot = pos + jnp.arange(k.shape[1], dtype=jnp.int32)  # [T]
  visible = slot[None, :] <= query_slot[:, None]  # [T, S]
  if window is not None:
    visible &= slot[None, :] > query_slot[:, None] - window
  visible = visible[None] & (cache["document"][:, None, :] == docs.documents[:, :, None])  # [B, T, S]
  return cache, visible[:, None]

