"""Per-device memory of a training step, estimated before anything compiles, and the check that refuses
a config whose step cannot fit the device.

  parameters, optimizer state, other variables: their bytes on one device under the planned shardings
    (FSDP divides them by the fsdp axis; optimizer moments are laid out as their parameters);
  gradients: as the parameters (same dtype, same layout);
  activations: what the backward pass keeps, i.e. the residuals JAX's autodiff saves for the loss under
    the model's remat policy (an abstract jax.vjp of one micro-batch), divided by the batch shards.
    Activations sharded further (tensor or expert axes) are counted unsharded, so this errs high.
The device's memory comes from jax's memory_stats (GPU, TPU), else a per-device-kind table, else
train.device_memory_gib; with none of these (CPU) nothing is checked. To plan a run on N devices:
  python -m train.memory --config experiments/gla.py:size=1.3b --devices 64 --device_memory_gib 95
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import models
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train.config import ConfigError
from train.step import forward, task_sums

GiB = 2**30
# HBM per device (chip, or TensorCore where jax shows one device per core) by jax's device_kind prefix,
# for devices whose memory_stats() says nothing.
DEVICE_MEMORY = {
  "TPU v2": 8 * GiB, "TPU v3": 16 * GiB, "TPU v4": 32 * GiB, "TPU v5 lite": 16 * GiB, "TPU v5e": 16 * GiB,
  "TPU v5p": 95 * GiB, "TPU v5": 95 * GiB, "TPU v6 lite": 32 * GiB, "TPU v6e": 32 * GiB, "TPU7x": 192 * GiB,
  "NVIDIA H200": 141 * GiB, "NVIDIA H100": 80 * GiB, "NVIDIA A100-SXM4-80GB": 80 * GiB,
  "NVIDIA A100-SXM4-40GB": 40 * GiB, "NVIDIA A100 80GB PCIe": 80 * GiB, "NVIDIA A100-PCIE-40GB": 40 * GiB,
  "NVIDIA L4": 24 * GiB, "NVIDIA A10G": 24 * GiB,
}
USABLE = 0.9  # of the device's memory: XLA's own buffers, fragmentation, collectives' scratch


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device."""

  params: int
  grads: int
  opt_state: int
  other: int  # non-parameter variables (RNG counters, KAN grids, ...)
  activations: int
  examples_per_device: float  # of one micro-batch

  @property
  def total(self) -> int:
    return self.params + self.grads + self.opt_state + self.other + self.activations

  def describe(self) -> str:
    parts = {"parameters": self.params, "gradients": self.grads, "optimizer state": self.opt_state,
             "activations": self.activations}
    return f"{self.total / GiB:.2f} GiB (" + ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts.items()) + ")"


def _device_bytes(tree, shardings) -> int:
  """Bytes one device holds of abstract arrays `tree` laid out by `shardings` (same structure)."""
  sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize, tree,
                       shardings)
  return int(sum(jax.tree.leaves(sizes)))


def batch_shards(config, mesh: Mesh) -> int:
  """Devices the batch is split over (the mesh axes the "batch" rule names)."""
  return math.prod(mesh.shape[a] for a in mesh_lib.rule_axes(config.mesh.rules.get("batch")))


def residual_bytes(graphdef, params, rest, inputs: jax.ShapeDtypeStruct, loss: str) -> int:
  """Bytes autodiff keeps for the backward pass of the loss on `inputs` (abstract; nothing runs), without
  the parameters and other variables themselves (they are kept anyway)."""

  def objective(p, r, x):
    outputs, aux, _, _ = forward(graphdef, p, r, {"inputs": x})
    labels = jnp.zeros(outputs.shape[:-1], jnp.int32) if loss == "xent" else jnp.zeros(outputs.shape)
    sums = task_sums(outputs, {"targets": labels, "weights": jnp.ones(outputs.shape[:-1])}, loss)
    return sums["loss"] + sum(aux.values(), jnp.float32(0.0))

  vjp = jax.eval_shape(lambda p, r, x: jax.vjp(lambda p: objective(p, r, x), p)[1], params, rest, inputs)
  unclaimed = {}  # saved inputs: each parameter, other variable and the batch once
  for x in jax.tree.leaves((params, rest, inputs)):
    unclaimed[(x.shape, str(x.dtype))] = unclaimed.get((x.shape, str(x.dtype)), 0) + 1
  total = 0
  for r in jax.tree.leaves(vjp):
    key = (r.shape, str(r.dtype))
    if unclaimed.get(key):
      unclaimed[key] -= 1
    else:
      total += math.prod(r.shape) * jnp.dtype(r.dtype).itemsize
  return total


def estimate(config, mesh: Mesh) -> Estimate:
  """Per-device bytes of one training step of `config` on `mesh`, from abstract shapes only."""
  rules = config.mesh.rules.to_dict()
  abstract_model, graphdef, abs_params, param_sh, rest_sh = state_lib.plan(config.model, config.seed, mesh, rules)
  params, rest = nnx.to_pure_dict(abs_params), nnx.to_pure_dict(nnx.split(abstract_model, nnx.Param, ...)[2])
  tx, _ = optim.make(config.optim, abs_params, config.train.steps)
  opt_state = jax.eval_shape(tx.init, params)
  opt_sh = state_lib.follow_params(opt_state, params, param_sh, NamedSharding(mesh, PartitionSpec()))
  param_bytes = _device_bytes(params, param_sh)
  micro = config.data.batch_size // config.optim.grad_accum
  inputs = models.input_spec(config.model, micro, config.data.get("seq_len", 0))
  with jax.set_mesh(mesh):
    activations = residual_bytes(graphdef, params, rest, inputs, config.train.loss)
  shards = batch_shards(config, mesh)
  return Estimate(
    params=param_bytes, grads=param_bytes, opt_state=_device_bytes(opt_state, opt_sh),
    other=_device_bytes(rest, rest_sh), activations=activations // shards, examples_per_device=micro / shards)


def device_memory(config, device) -> tuple[int | None, str]:
  """(bytes one device offers, where that number comes from); None when unknown (CPU)."""
  configured = config.train.get("device_memory_gib", 0.0)
  if configured:
    return round(configured * GiB), "train.device_memory_gib"
  stats = device.memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory_stats"
  for kind, size in DEVICE_MEMORY.items():
    if device.device_kind.startswith(kind):
      return size, f"{device.device_kind} (table in train/memory.py)"
  return None, f"{device.device_kind}: unknown"


def remedies(config, est: Estimate, mesh: Mesh) -> list[str]:
  """What would bring the estimate down, largest lever first."""
  out = []
  state_bytes = est.params + est.grads + est.opt_state
  fsdp_all = mesh.shape["fsdp"] == mesh.size
  if est.activations >= state_bytes:
    if config.model.get("remat", "none") in ("none", False):
      out.append("model.remat='full' (keeps one activation per layer, recomputes the rest)")
    out.append(f"optim.grad_accum={2 * config.optim.grad_accum} (half the micro-batch; same update)")
    out.append("a smaller data.batch_size or data.seq_len")
  if not fsdp_all:
    out.append("mesh.shape: fsdp=-1 and data=1 (parameters, gradients and optimizer state sharded over every device)")
  if est.activations < state_bytes:
    out.append("more devices (parameters and optimizer state shard over them) or a smaller model")
  return out


def check(config, mesh: Mesh) -> Estimate | None:
  """Estimate the step's per-device memory and refuse (ConfigError) a config that cannot fit; returns the
  estimate (None where the device's memory is unknown or train.memory_check is off)."""
  if not config.train.get("memory_check", True):
    return None
  budget, source = device_memory(config, jax.local_devices()[0])  # one this process can ask
  if budget is None:
    return None
  est = estimate(config, mesh)
  if est.total > USABLE * budget:
    fixes = "; ".join(remedies(config, est, mesh))
    raise ConfigError(
      f"the training step needs about {est.describe()} per device at {est.examples_per_device:g} examples per "
      f"device (data.batch_size={config.data.batch_size} over {batch_shards(config, mesh)} batch shards, "
      f"optim.grad_accum={config.optim.grad_accum}, model.remat={config.model.get('remat', 'none')!r}), more "
      f"than {USABLE:.0%} of the {budget / GiB:.2f} GiB a device has ({source}). Change: {fixes}. "
      "(train.device_memory_gib overrides the device's size; train.memory_check=false skips this check.)")
  return est


def compiled_bytes(compiled) -> int:
  """XLA's own count for a compiled step, per device: arguments + outputs - donated (aliased) + temporaries."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)



def main(argv: list[str] | None = None) -> int:
  """python -m train.memory --config SPEC [--config.a.b=v ...] --devices N [--device_memory_gib G]: the
  per-device estimate of a config on N devices (simulated on the CPU; nothing is compiled or allocated)."""
  import argparse
  import sys

  from train import config as config_lib
  from train import validate

  parser = argparse.ArgumentParser(prog="python -m train.memory", description=main.__doc__)
  parser.add_argument("--config", required=True)
  parser.add_argument("--devices", type=int, required=True, help="devices of the planned run")
  parser.add_argument("--device_memory_gib", type=float, default=0.0, help="each device's memory, to say if it fits")
  args, overrides = parser.parse_known_args(argv)
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", args.devices)
  try:
    config = config_lib.load(args.config)
    config_lib.apply_overrides(config, overrides)
    validate.validate(config, num_devices=args.devices, process_count=1)
    mesh = mesh_lib.make_mesh(config.mesh.shape)
    with jax.set_mesh(mesh):
      est = estimate(config, mesh)
  except (ConfigError, ValueError) as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  print(f"{args.config} on {args.devices} devices (mesh {dict(mesh.shape)}): {est.describe()} per device, "
        f"{est.examples_per_device:g} examples per device per micro-batch")
  if args.device_memory_gib:
    fits = est.total <= USABLE * args.device_memory_gib * GiB
    print(("fits" if fits else "does not fit") + f" in {USABLE:.0%} of {args.device_memory_gib:g} GiB")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
