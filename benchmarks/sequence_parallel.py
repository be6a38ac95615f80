"""Sequence parallelism: memory per device, communication and step time vs the number of sequence shards.

A hybrid LM (default: 3 Gated DeltaNet layers and one softmax-attention layer, SwiGLU, d_model 128) at a fixed
sequence length T; forward + backward of the LM loss, jitted on a mesh (sequence=R) for R in --shards
(R=1: one device, no sequence axis). Per R and attention method ("all_gather", "ring"):
  memory   XLA's compiled per-device estimate (temp + arguments + outputs), memory_analysis();
  comm     bytes of every collective of the compiled per-device program, by kind (collective_bytes);
  time     median seconds of the step after a warm-up (wall, and the process's CPU time: steadier on a
           shared machine).
On CPU the devices are fake (jax_num_cpu_devices), so every "device" shares the same cores: time shows the
overhead of the split, not a speed-up; memory and communication are what the split changes. On a machine
with several GPUs / TPUs the real devices are used.

  python -m benchmarks.sequence_parallel [--seq-len 2048] [--shards 1,2,4,8] [--out runs/benchmarks/sp.json]
"""

import argparse
import json
import pathlib
import platform
import re

import jax

from benchmarks import timing

ASYNC_START = "-start"
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_BITS = {"pred": 8, "bf16": 16}


def _shape_bytes(dtype: str, dims: str) -> int:
  bits = _BITS.get(dtype) or int(dtype[1:])
  count = 1
  for d in filter(None, dims.split(",")):
    count *= int(d)
  return count * bits // 8


def collectives(hlo_text: str) -> list[tuple[str, str, int]]:
  """(kind, result type, bytes) of every collective of a compiled (per-device, SPMD) HLO module, bytes the
  size of its result (the data it leaves on the device; an all-gather's is R times what it sends). An async
  "-start" op's result is the tuple (operands, results, ...): its second element is counted."""
  out = []
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    shapes = _SHAPE.findall(match.group(1))
    if match.group(3):
      shapes = shapes[1:2]
    out.append((match.group(2), " ".join(f"{d}[{s}]" for d, s in shapes), sum(_shape_bytes(*s) for s in shapes)))
  return out


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """{collective kind: bytes} summed over `collectives`."""
  out: dict[str, int] = {}
  for kind, _, size in collectives(hlo_text):
    out[kind] = out.get(kind, 0) + size
  return out


def _setup_devices(n: int) -> None:
  """n fake CPU devices when no accelerator is present; must run before JAX picks a backend."""
  jax.config.update("jax_num_cpu_devices", n)


def _lm_config(args):
  from models.lm import lm_model_config

  c = lm_model_config("tiny")
  c.update(dict(d_model=args.d_model, n_heads=args.heads, n_kv_heads=args.heads, d_ff=3 * args.d_model,
                vocab_size=256, blocks=args.blocks))
  c.options = dict(attention=dict(sequence_parallel="all_gather"))
  return c


def measure(args, shards: int, method: str) -> dict:
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from models.lm import LM
  from train import mesh as mesh_lib

  c = _lm_config(args)
  c.options.attention.sequence_parallel = method
  model = LM(c, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq_len), 0, c.vocab_size)
  segment_ids = (jnp.arange(args.seq_len)[None] // args.document_len).repeat(args.batch, 0).astype(jnp.int32)

  def loss(params, tokens, segment_ids):
    logits = nnx.merge(graphdef, params, rest)(tokens, segment_ids=segment_ids)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

  step = jax.jit(jax.value_and_grad(loss))
  devices = jax.devices()[:shards]
  mesh = mesh_lib.make_mesh(dict(data=1, sequence=shards), devices=devices)
  with jax.set_mesh(mesh):
    time_split = NamedSharding(mesh, P(None, "sequence" if shards > 1 else None))
    inputs = (params, jax.device_put(tokens, time_split), jax.device_put(segment_ids, time_split))
    compiled = step.lower(*inputs).compile()
    memory = compiled.memory_analysis()
    comm = collective_bytes(compiled.as_text())
    seconds, cpu_seconds = timing.median_seconds(compiled, inputs, args.repeats)
  return {"shards": shards, "attention": method, "T": args.seq_len, "B": args.batch,
          "memory_bytes_per_device": int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                         + memory.output_size_in_bytes),
          "temp_bytes_per_device": int(memory.temp_size_in_bytes),
          "collective_bytes_per_device": comm, "seconds": seconds, "cpu_seconds": cpu_seconds}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--document-len", type=int, default=700, help="packed documents of this many tokens")
  parser.add_argument("--d-model", type=int, default=128)
  parser.add_argument("--heads", type=int, default=2)
  parser.add_argument("--blocks", default="(gated_delta_net, swiglu) * 3 + (attention, swiglu)")
  parser.add_argument("--shards", default="1,2,4,8")
  parser.add_argument("--methods", default="all_gather,ring")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  shard_counts = [int(s) for s in args.shards.split(",")]
  _setup_devices(max(shard_counts))
  rows = []
  print(f"{jax.default_backend()} x{jax.device_count()}, T={args.seq_len}, B={args.batch}, {args.blocks}, "
        f"d_model={args.d_model}")
  print(f"{'shards':>6} {'attention':>10} {'MiB/device':>10} {'temp MiB':>9} {'comm KiB':>9} {'seconds':>8} "
        f"{'cpu s':>7}  collectives")
  for shards in shard_counts:
    for method in args.methods.split(",") if shards > 1 else ["all_gather"]:
      row = measure(args, shards, method)
      rows.append(row)
      comm = row["collective_bytes_per_device"]
      print(f"{shards:>6} {method if shards > 1 else '-':>10} {row['memory_bytes_per_device'] / 2**20:>10.1f} "
            f"{row['temp_bytes_per_device'] / 2**20:>9.1f} {sum(comm.values()) / 2**10:>9.1f} "
            f"{row['seconds']:>8.3f} {row['cpu_seconds']:>7.2f}  {comm}")
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"backend": jax.default_backend(), "devices": jax.device_count(), "jax": jax.__version__,
            "machine": platform.machine(), "blocks": args.blocks, "d_model": args.d_model}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
  main()
