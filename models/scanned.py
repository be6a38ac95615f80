"""`count` repetitions of a group of blocks run as one lax.scan: their variables are stacked on a
leading "layers" axis, so the step compiles the group once, whatever the depth (model.scan_layers).

Built from the group's `count` copies (made in layer order, so the initial values equal those of
the unscanned model's layers); every copy must have the same structure and static attributes.
Side outputs the blocks sow (aux losses, layer metrics) are collected per repetition and sown again
by the stack, one entry per layer, as the unscanned model would have them.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from layers.aux import AuxLoss, LayerMetric

SOWN = (AuxLoss, LayerMetric)
LAYERS = "layers"  # the logical name of the stacked axis (replicated unless the mesh rules map it)


def _difference(a: nnx.Module, b: nnx.Module) -> str:
  """The first attribute (path.name: a vs b) in which two modules of one structure differ."""
  for (path, x), (_, y) in zip(nnx.iter_graph(a), nnx.iter_graph(b)):
    if isinstance(x, nnx.Module):
      for name, value in vars(x).items():
        other = vars(y).get(name)
        if not name.startswith("_") and not isinstance(value, nnx.Module | nnx.Variable) and value != other:
          return f"{'/'.join(map(str, path))}.{name}: {value!r} vs {other!r}"
  return "structure"


def check_stackable(copies: Sequence[nnx.Module]) -> None:
  """Raise unless every copy has the first one's structure and static attributes (what a scan shares)."""
  graphdef = nnx.graphdef(copies[0])
  for i, other in enumerate(copies):
    if nnx.graphdef(other) != graphdef:
      raise ValueError(f"model.scan_layers: repetition {i} of a repeated block group differs from the first in "
                       f"{_difference(copies[0], other)}, a per-layer constant the stacked layers cannot keep; set "
                       "model.scan_layers=False for this model")


def _stack_into(first: nnx.Module, copies: Sequence[nnx.Module]) -> None:
  """Replace every variable of `first` by the stack of that variable over `copies` (first included)."""
  check_stackable(copies)
  nnx.update(first, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(c) for c in copies]))
  for _, var in nnx.iter_graph(first):
    if isinstance(var, nnx.Variable) and var.get_metadata().get("axes") is not None:
      var.set_metadata(axes=(LAYERS, *var.get_metadata()["axes"]))


class Layers(nnx.Module):
  """One repetition of a group: its blocks as attributes layer0, layer1, ... in order (an nnx.List's
  integer keys cannot sit next to the string key nnx.capture adds, once the state is a scanned pytree)."""

  def __init__(self, blocks: Sequence[nnx.Module]):
    self.n = len(blocks)
    for i, block in enumerate(blocks):
      setattr(self, f"layer{i}", block)

  def __iter__(self):
    return (getattr(self, f"layer{i}") for i in range(self.n))


class ScannedGroup(nnx.Module):
  """blocks(x, **kw) of `count` stacked copies of a group of blocks (Layers), applied in order."""

  def __init__(self, copies: Sequence[Layers], *, remat_policy: Callable | None = None,
               constrain: Callable[[jax.Array], jax.Array] = lambda x: x):
    self.count = len(copies)
    self.group = copies[0]
    _stack_into(self.group, copies)
    self.remat_policy = remat_policy
    self.constrain = constrain

  def _one(self) -> Layers:
    """The group with one repetition's shapes (abstract): what analytic FLOPs and parameter counts read."""
    graphdef, state = nnx.split(self.group)
    return nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state))

  def flops_per_token(self, seq_len: int) -> float:
    from layers.forward_flops import forward_flops_per_token

    return self.count * forward_flops_per_token(self._one(), seq_len)

  def active_params(self) -> float:
    from layers.forward_flops import active_params

    return self.count * active_params(self._one())

  def _scan(self, step: Callable, x: jax.Array, xs=None):
    """lax.scan of step(group, x, xs_i) -> (x, ys_i) over the repetitions; the group's variables updated."""
    # Side outputs captured around this call (nnx.capture) stay out of the scanned state: they are sown below.
    graphdef, state, outer_sown = nnx.split(self.group, nnx.Not(nnx.Any(*SOWN)), ...)

    def body(x, sliced):
      layer_state, xs_i = sliced
      group = nnx.merge(graphdef, layer_state, outer_sown)
      (x, ys), *sown = nnx.capture(lambda g: step(g, x, xs_i), *SOWN)(group)
      return x, (nnx.state(group, nnx.RngState), ys, sown)  # the only variables a forward pass advances

    if self.remat_policy is not None:
      body = jax.checkpoint(body, policy=self.remat_policy, prevent_cse=False)
    x, (rng_state, ys, sown) = jax.lax.scan(body, x, (state, xs))
    nnx.update(self.group, rng_state)
    for kind, captured in zip(SOWN, sown):
      for path, var in nnx.to_flat_state(captured):
        for value in var.get_value() if isinstance(var.get_value(), tuple) else (var.get_value(),):
          for i in range(self.count):
            self.sow(kind, str(path[-1]), value[i])
    return x, ys

  def __call__(self, x: jax.Array, **kwargs) -> jax.Array:  # [B, T, D]
    def step(group, x, _):
      for block in group:
        x = self.constrain(block(x, **kwargs))
      return x, None

    return self._scan(step, x)[0]

  def init_cache(self, batch_size: int, max_len: int):
    graphdef, state = nnx.split(self.group)
    one = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], state))
    caches = [block.init_cache(batch_size, max_len) for block in one]
    return jax.tree.map(lambda c: jnp.broadcast_to(c, (self.count, *c.shape)), caches)

  def decode(self, x: jax.Array, caches, pos: jax.Array, **kwargs):  # x [B, T, D]
    def step(group, x, layer_caches):
      out = []
      for block, cache in zip(group, layer_caches):
        x, cache = block.decode(x, cache, pos, **kwargs)
        out.append(cache)
      return x, out

    return self._scan(step, x, caches)
