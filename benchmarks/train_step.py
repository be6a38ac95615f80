"""Tokens/s and MFU of the baseline LM's training step at two sizes (not a test).

  python -m benchmarks.train_step [--quick] [--out runs/benchmarks/train_step.json]

Each row: median step time over timed steps after warm-up (compilation excluded), tokens/s,
analytic FLOPs per step and MFU against the peak of train.mfu (measured matmul on CPU). "cpu MFU" divides
FLOPs per process-CPU-second of the step by those of an fp32 1024² matmul timed the same way in the same run:
on a host shared with other jobs, wall-clock MFU mixes in the waiting; CPU time does not.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax

from models.lm import lm_model_config
from train import config as config_lib
from train import mesh as mesh_lib
from train import mfu
from train.data import mqar, pipeline
from train.loop import build_program, global_batch

SIZES = {  # name: (LM_SIZES key or shape overrides, seq_len, batch)
  "tiny": (dict(d_model=128, n_heads=4, d_ff=384, blocks="(attention, swiglu) * 2"), 256, 8),
  "small": (dict(d_model=256, n_heads=4, d_ff=768, blocks="(attention, swiglu) * 4"), 256, 8),
  "d512": (dict(d_model=512, n_heads=8, d_ff=1536, blocks="(attention, swiglu) * 4"), 256, 8),
  "125m": (dict(d_model=768, n_heads=12, d_ff=2048, blocks="(attention, swiglu) * 12"), 1024, 8),
}


def bench(name: str, steps: int, warmup: int, batch: int | None = None) -> dict:
  shape, seq_len, default_batch = SIZES[name]
  batch = batch or default_batch
  c = config_lib.base_config(lm_model_config())
  c.data.update(mqar.data_config(vocab_size=256, num_pairs=16, seq_len=seq_len))
  c.model.update(shape)
  c.data.batch_size = batch * jax.device_count()
  c.train.steps = steps + warmup
  program = build_program(c, mesh_lib.make_mesh(c.mesh.shape))
  state = program.init_state()
  it = pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size)
  batches = [global_batch(next(it), program.batch_sharding) for _ in range(4)]
  times, cpu_times = [], []
  for i in range(steps + warmup):
    t, cpu0 = time.perf_counter(), time.process_time()
    state, m = program.train_step(state, batches[i % 4])
    jax.block_until_ready(m["loss"])
    if i >= warmup:
      times.append(time.perf_counter() - t)
      cpu_times.append(time.process_time() - cpu0)
  dt = statistics.median(times)
  step_flops = mfu.train_flops_per_step(program.setup.abstract_model, seq_len=seq_len,
                                        batch_size=c.data.batch_size)
  peak, source = mfu.peak_flops()
  params = sum(int(v.size) for v in jax.tree.leaves(program.setup.abstract_params))
  return {"model": name, "params": params, "seq_len": seq_len, "batch": c.data.batch_size,
          "step_ms": dt * 1e3, "tokens_per_sec": c.data.batch_size * seq_len / dt,
          "flops_per_step": step_flops, "mfu": step_flops / dt / peak, "peak_flops": peak, "peak_source": source,
          "cpu_mfu": step_flops / statistics.median(cpu_times) / matmul_flops_per_cpu_second()}


def matmul_flops_per_cpu_second(n: int = 1024, repeats: int = 5) -> float:
  """FLOPs per process-CPU-second of an fp32 n x n matmul (median of `repeats` after a warm-up)."""
  a = jax.numpy.ones((n, n), jax.numpy.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  cpu = []
  for _ in range(repeats):
    c = time.process_time()
    f(a).block_until_ready()
    cpu.append(time.process_time() - c)
  return 2 * n**3 / statistics.median(cpu)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="3 timed steps, tiny only")
  parser.add_argument("--batch", type=int, default=None, help="sequences per device (default: the size's)")
  parser.add_argument("--out", default="runs/benchmarks/train_step.json")
  args = parser.parse_args()
  sizes, steps = (["tiny"], 3) if args.quick else (args.sizes.split(","), args.steps)
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} x {jax.device_count()} ({dev.platform}); jax {jax.__version__}; "
        f"python {platform.python_version()}")
  rows = [bench(s, steps, args.warmup, args.batch) for s in sizes]
  print(f"{'model':8} {'params':>12} {'T':>6} {'B':>4} {'ms/step':>10} {'tokens/s':>12} {'MFU':>8} {'cpu MFU':>8}")
  for r in rows:
    print(f"{r['model']:8} {r['params']:>12,} {r['seq_len']:>6} {r['batch']:>4} {r['step_ms']:>10.1f} "
          f"{r['tokens_per_sec']:>12,.0f} {r['mfu']:>8.2%} {r['cpu_mfu']:>8.2%}")
  print(f"peak: {rows[0]['peak_flops']:.3g} FLOP/s ({rows[0]['peak_source']})")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": dev.device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
               "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
