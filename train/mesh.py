"""Device mesh from the config and logical-axis -> mesh-axis sharding rules.

Mesh axes are (data, fsdp, tensor, expert, sequence); one size may be -1 (all remaining devices).
Parameters name their dims logically ("embed", "mlp", ...); `config.mesh.rules` maps each
name to a mesh axis, a tuple of axes, or None (replicated). Unlisted names are replicated.
Batches are split along their leading dim by the "batch" rule and, for token batches ([B, T] fields),
along T by the "length" rule (the "sequence" axis: sequence parallelism, layers/sequence_parallel.py).

Multi-slice TPU (and multi-host GPU over a slower network): `config.mesh.dcn_shape` splits each
axis across slices too. `mesh.shape` is then the mesh inside one slice (over its fast ICI links),
`dcn_shape` the slices' arrangement (over the data-centre network), and each axis of the mesh is
their product: e.g. shape fsdp=-1 and dcn_shape data=2 on two v5p-64 slices is FSDP within a slice
and data parallelism across the two, so only gradient all-reduces cross the slow links.
"""

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor", "expert", "sequence")

# Logical parameter / activation axis -> mesh axes. Unlisted names are replicated.
DEFAULT_RULES = {
  "batch": ("data", "fsdp"),
  "embed": "fsdp",
  "vocab": "tensor",
  "mlp": "tensor",
  "heads": "tensor",
  "kv_heads": "tensor",
  "expert": "expert",
  "length": "sequence",  # the time axis of token batches and activations (sequence parallelism)
}


def defaults() -> ml_collections.ConfigDict:
  """The base config's `mesh` section: data parallel over every device, one slice."""
  return ml_collections.ConfigDict(dict(
    shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1, sequence=1)),
    dcn_shape=ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1, sequence=1)),  # slices per axis
    rules=ml_collections.ConfigDict(DEFAULT_RULES),
  ))


def mesh_shape(shape_cfg: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolve the -1 entry; a clear error if the sizes do not multiply to the device count."""
  unknown = set(shape_cfg) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {AXES}")
  sizes = [int(shape_cfg.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}; "
                     "set one of config.mesh.shape.* to -1")
  return tuple(sizes)


def dcn_sizes(dcn_cfg: Mapping[str, int] | None) -> tuple[int, ...]:
  """Slices along each axis (1 = the axis stays inside a slice); every size explicit and positive."""
  dcn_cfg = dict(dcn_cfg or {})
  unknown = set(dcn_cfg) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)} in dcn_shape; mesh axes are {AXES}")
  sizes = tuple(int(dcn_cfg.get(a, 1)) for a in AXES)
  if any(s < 1 for s in sizes):
    raise ValueError(f"dcn_shape sizes must be >= 1 (the number of slices along each axis), got "
                     f"{dict(zip(AXES, sizes))}")
  return sizes


def full_shape(shape_cfg: Mapping[str, int], num_devices: int, dcn_cfg: Mapping[str, int] | None = None
               ) -> tuple[int, ...]:
  """The mesh's size along each axis: the per-slice shape (its -1 resolved) times the slices."""
  dcn = dcn_sizes(dcn_cfg)
  slices = math.prod(dcn)
  if num_devices % slices:
    raise ValueError(f"mesh.dcn_shape {dict(zip(AXES, dcn))} asks for {slices} slices; {num_devices} devices do "
                     "not split into that many equal slices")
  return tuple(i * d for i, d in zip(mesh_shape(shape_cfg, num_devices // slices), dcn))


def device_slice(device) -> int:
  """The slice a device belongs to: its TPU slice (multi-slice), else its process (one host per node)."""
  return getattr(device, "slice_index", device.process_index)


class _InSlice:
  """A device seen as belonging to slice `slice_index` (what jax's hybrid mesh groups devices by)."""

  def __init__(self, device, slice_index: int):
    self.device, self.slice_index = device, slice_index

  def __getattr__(self, name: str) -> Any:  # device_kind, platform, coords, ...: the device's own
    return getattr(self.device, name)


def hybrid_devices(ici: Sequence[int], dcn: Sequence[int], devices: Sequence,
                   slice_of: Callable[[Any], int] = device_slice) -> np.ndarray:
  """Device array of shape ici * dcn (per axis): each slice's devices laid out by `ici` (topology-aware,
  jax's create_device_mesh), slices tiled by `dcn` (jax's create_hybrid_device_mesh), slices as
  `slice_of(device)` says."""
  try:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, [_InSlice(d, slice_of(d)) for d in devices],
                                                allow_split_physical_axes=True)
  except ValueError as e:
    raise ValueError(f"mesh.dcn_shape {dict(zip(AXES, dcn))} with per-slice mesh.shape {dict(zip(AXES, ici))}: "
                     f"{e}; the product of mesh.dcn_shape must be the number of TPU slices (of hosts, on devices "
                     "without a slice_index)") from None
  return np.vectorize(lambda d: d.device, otypes=[object])(grid)


def make_mesh(shape_cfg: Mapping[str, int], devices: Sequence | None = None, *,
              dcn_shape: Mapping[str, int] | None = None,
              slice_of: Callable[[Any], int] = device_slice) -> Mesh:
  """The (data, fsdp, tensor, expert, sequence) mesh over `devices` (default: all), across slices per dcn_shape."""
  devices = list(jax.devices() if devices is None else devices)
  dcn = dcn_sizes(dcn_shape)
  types = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) == 1:
    return jax.make_mesh(mesh_shape(shape_cfg, len(devices)), AXES, axis_types=types, devices=devices)
  ici = tuple(f // d for f, d in zip(full_shape(shape_cfg, len(devices), dcn_shape), dcn))
  return Mesh(hybrid_devices(ici, dcn, devices, slice_of), AXES, axis_types=types)


def rule_axes(rule) -> tuple[str, ...]:
  if rule is None:
    return ()
  return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping, mesh: Mesh,
                    shape: Sequence[int] | None = None, name: str = "") -> PartitionSpec:
  """PartitionSpec for logical `axes`; a mesh axis is used at most once; size-1 mesh axes are dropped."""
  used: set[str] = set()
  spec = []
  for i, logical in enumerate(axes):
    named = rule_axes(rules.get(logical) if logical else None)
    for a in named:
      if a not in mesh.shape:
        raise ValueError(f"sharding rule for {logical!r} names unknown mesh axis {a!r}; axes are {AXES}")
    mesh_axes = tuple(a for a in named if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in mesh_axes)
    if shape is not None and mesh_axes and shape[i] % size:
      raise ValueError(f"parameter {name} dim {i} ({logical!r}, size {shape[i]}) is not divisible by mesh "
                       f"axes {mesh_axes} (size {size}); change config.mesh.shape or config.mesh.rules.{logical}")
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return PartitionSpec(*spec)


def state_shardings(abstract_state: nnx.State, rules: Mapping, mesh: Mesh) -> dict:
  """Pure-dict pytree of NamedShardings for an (abstract) nnx.State whose Variables carry `axes`."""
  flat = []
  for path, var in nnx.to_flat_state(abstract_state):
    axes = var.get_metadata().get("axes")
    shape = var.shape
    if axes is None:
      spec = PartitionSpec()
    else:
      spec = logical_to_spec(axes, rules, mesh, shape, "/".join(map(str, path)))
    flat.append((path, NamedSharding(mesh, spec)))
  return nnx.to_pure_dict(nnx.from_flat_state(flat))


def batch_sharding(mesh: Mesh, rules: Mapping) -> NamedSharding:
  """Leading (batch) dim split over the mesh axes the "batch" rule names, the second (time, of token
  batches) over those the "length" rule names."""
  batch, length = (tuple(a for a in rule_axes(rules.get(name)) if mesh.shape[a] > 1) for name in ("batch", "length"))
  if not length:
    return NamedSharding(mesh, PartitionSpec(batch or None))
  return NamedSharding(mesh, PartitionSpec(batch or None, length[0] if len(length) == 1 else length))



@functools.lru_cache(maxsize=64)
def row_group(sharding: NamedSharding, process: int | None = None,
              process_of: Callable = lambda device: device.process_index) -> tuple[int, int]:
  """(index, count): the rows of a global batch laid out by `sharding` that this process's devices hold,
  as group `index` of `count` equal, contiguous groups. It is the process's data shard: processes whose
  devices split the same rows along T (a "sequence" axis across hosts) or hold them replicated load the
  same rows (`global_batch` then places each device's slice). process / process_of: injectable for tests.
  """
  mesh, spec = sharding.mesh, sharding.spec
  process = jax.process_index() if process is None else process
  axes = rule_axes(spec[0]) if len(spec) else ()
  sizes = [mesh.shape[a] for a in axes]
  dims = [mesh.axis_names.index(a) for a in axes]
  rows = sorted({int(np.ravel_multi_index([coords[d] for d in dims], sizes)) if axes else 0
                 for coords, device in np.ndenumerate(mesh.devices) if process_of(device) == process})
  n = len(rows)
  if rows != list(range(rows[0], rows[0] + n)) or rows[0] % n:
    raise ValueError(f"process {process} holds batch row shards {rows} of mesh axes {axes}: not one aligned "
                     "contiguous block; order the mesh so that each process's devices are neighbours along them")
  return rows[0] // n, math.prod(sizes) // n


def with_activation_rules(fn: Callable, rules: Mapping, mesh: Mesh) -> Callable:
  """`fn` traced with activation sharding hints (layers.sharding.constrain) mapped by `rules` onto `mesh`."""
  from layers.sharding import sharding_rules

  def to_sharding(axes: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape, "activation"))

  @functools.wraps(fn)  # keeps its name: jit, the compilation cache and profiles show train_step, eval_step
  def traced(*args, **kwargs):
    with sharding_rules(to_sharding):
      return fn(*args, **kwargs)

  return traced
