"""Compile time and step time of the LM's training step vs depth, with and without model.scan_layers
(not a test).

  python -m benchmarks.scan_layers [--depths 2,8,24] [--mixer gated_delta_net] [--out runs/benchmarks/scan_layers.json]

Each row: seconds to lower + compile the jitted train step (one mesh over every device), then the
median step time of a few steps after warm-up; ratios are against the unscanned model of the same depth
measured in the same process.
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
from train.data import mqar, pipeline
from train.loop import build_program, global_batch


def bench(mixer: str, depth: int, scan: bool, steps: int = 5) -> dict:
  c = config_lib.base_config(lm_model_config())
  c.data.update(mqar.data_config(vocab_size=256, num_pairs=8, seq_len=128))
  c.model.update(dict(d_model=64, n_heads=2, d_ff=192, blocks=f"({mixer}, swiglu) * {depth}",
                      scan_layers=scan))
  c.data.batch_size = 2 * jax.device_count()
  mesh = mesh_lib.make_mesh(c.mesh.shape)
  program = build_program(c, mesh)
  it = pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size)
  batch = global_batch(next(it), program.batch_sharding)
  with jax.set_mesh(mesh):
    t = time.perf_counter()
    step = program.train_step.lower(program.setup.abstract_state, batch).compile()
    compile_s = time.perf_counter() - t
    state = program.init_state()
    times = []
    for i in range(steps + 2):
      t = time.perf_counter()
      state, m = step(state, batch)
      jax.block_until_ready(m["loss"])
      if i >= 2:
        times.append(time.perf_counter() - t)
  return {"mixer": mixer, "depth": depth, "scan_layers": scan, "compile_s": compile_s,
          "step_ms": statistics.median(times) * 1e3}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--depths", default="2,8,24")
  parser.add_argument("--mixer", default="gated_delta_net")
  parser.add_argument("--out", default="runs/benchmarks/scan_layers.json")
  args = parser.parse_args()
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} x {jax.device_count()} ({dev.platform}); jax {jax.__version__}; "
        f"python {platform.python_version()}")
  rows = []
  print(f"{'mixer':16} {'depth':>5} {'scan':>5} {'compile s':>10} {'vs plain':>9} {'ms/step':>9} {'vs plain':>9}")
  for depth in map(int, args.depths.split(",")):
    plain = bench(args.mixer, depth, False)
    for r in (plain, bench(args.mixer, depth, True)):
      r["compile_vs_plain"] = r["compile_s"] / plain["compile_s"]
      r["step_vs_plain"] = r["step_ms"] / plain["step_ms"]
      rows.append(r)
      print(f"{r['mixer']:16} {depth:>5} {r['scan_layers']!s:>5} {r['compile_s']:>10.1f} "
            f"{r['compile_vs_plain']:>9.2f} {r['step_ms']:>9.1f} {r['step_vs_plain']:>9.2f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": dev.device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
               "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
