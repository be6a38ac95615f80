"""Analytic forward FLOPs per token of a module tree (training = 3 x forward), and active parameters.

Default: every >= 2-D parameter is a matmul weight used once per token (2 FLOPs per weight); a leading
"expert" axis (experts stacked by layers/moe/experts.py) does not count as a dimension, so stacked biases stay
biases.
A module refines this with one of two hooks:
  `flops_per_token(seq_len) -> float`        replaces the count for its whole subtree
                                             (MoE: only active experts; embeddings: lookups are free);
  `extra_flops_per_token(seq_len) -> float`  adds work its parameters do not show
                                             (attention scores, linear-attention state updates,
                                             rational activations, KAN bases).
"""

from collections.abc import Iterable

from flax import nnx


def _children(module: nnx.Module) -> Iterable:
  values = list(module) if isinstance(module, nnx.List) else list(vars(module).values())
  for v in values:
    if isinstance(v, nnx.Module | nnx.Variable):
      yield v
    elif isinstance(v, list | tuple):
      yield from (x for x in v if isinstance(x, nnx.Module | nnx.Variable))


def _matrix_dims(param: nnx.Param) -> int:
  """Dimensions of a parameter, a leading "expert" (stacking) axis not counted."""
  axes = param.get_metadata().get("axes") or ()
  return len(param.shape) - (1 if axes[:1] == ("expert",) else 0)


def forward_flops_per_token(module: nnx.Module, seq_len: int) -> float:
  """Forward FLOPs per token of `module` (works on abstract modules from nnx.eval_shape)."""
  if hasattr(module, "flops_per_token"):
    return float(module.flops_per_token(seq_len))
  total = float(module.extra_flops_per_token(seq_len)) if hasattr(module, "extra_flops_per_token") else 0.0
  for child in _children(module):
    if isinstance(child, nnx.Param):
      if _matrix_dims(child) >= 2:
        total += 2.0 * child.size
    elif isinstance(child, nnx.Module):
      total += forward_flops_per_token(child, seq_len)
  return total


def active_params(module: nnx.Module) -> float:
  """Parameters a token actually uses (all of them, except where a module says otherwise through
  an `active_params()` hook: an MoE counts its router, top_k of its experts and its shared ones)."""
  if hasattr(module, "active_params"):
    return float(module.active_params())
  total = 0.0
  for child in _children(module):
    if isinstance(child, nnx.Param):
      total += child.size
    elif isinstance(child, nnx.Module):
      total += active_params(child)
  return total


def causal_context(seq_len: int, window: int | None = None) -> float:
  """Mean number of keys a query attends to under a causal (optionally sliding-window) mask."""
  if not window or window >= seq_len:
    return (seq_len + 1) / 2
  return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len
