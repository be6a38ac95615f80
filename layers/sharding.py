"""Activation sharding hints: a layer names an activation's dims logically ("batch", "length", "embed");
whoever traces the model (the training step) says what those names mean on its device mesh.

Without hints XLA picks activation layouts itself, and with FSDP (parameters sharded over the axis the
batch is also split over) it can all-gather activations instead of parameters. Outside `sharding_rules`
(tests, single device, decoding) `constrain` returns its input unchanged.
"""

import contextlib
import contextvars
from collections.abc import Callable, Sequence

import jax

_SPEC = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def sharding_rules(to_sharding: Callable[[Sequence[str | None], Sequence[int]], jax.sharding.Sharding]):
  """While active, constrain(x, axes) lays x out as to_sharding(axes, x.shape)."""
  token = _SPEC.set(to_sharding)
  try:
    yield
  finally:
    _SPEC.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """x laid out as the active rules map its logical `axes` (one name or None per dim)."""
  to_sharding = _SPEC.get()
  return x if to_sharding is None else jax.lax.with_sharding_constraint(x, to_sharding(axes, x.shape))
