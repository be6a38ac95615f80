"""Training-step throughput of mixture-of-experts feed-forwards vs a dense feed-forward.

Models are feed-forward-only LMs (models.lm with blocks "(none, FFN) * L", so the FFN dominates):
dense SwiGLU of width d_ff vs MoE with 8 experts, top-2, expert width d_ff / 2 (equal active
parameters), with dropless (sort + tiled matmul or ragged_dot) and capacity-factor dispatch,
and SMEAR. One step
= forward + backward of cross-entropy + aux losses (no optimizer update), jitted; time is the
median of several runs after a warm-up, on the default device, float32.

  python -m benchmarks.moe [--quick] [--out runs/benchmarks/moe.json]
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import flax
import jax
import optax
from flax import nnx

from experiments import common
from layers.aux import AuxLoss, LayerMetric
from models.lm import LM

N_EXPERTS, TOP_K = 8, 2


def variants(d_ff: int) -> dict[str, tuple[str, dict]]:
  """name -> (ffn registry name, options)."""
  moe = dict(n_experts=N_EXPERTS, top_k=TOP_K, expert_hidden=d_ff // TOP_K)
  return {
    "dense swiglu": ("swiglu", {}),
    "moe dropless tiled": ("moe", {**moe, "dispatch": "dropless", "grouped_matmul": "tiled"}),
    "moe dropless ragged": ("moe", {**moe, "dispatch": "dropless", "grouped_matmul": "ragged_dot"}),
    "moe capacity 1.25": ("moe", {**moe, "dispatch": "capacity", "capacity_factor": 1.25}),
    "moe capacity 2.0": ("moe", {**moe, "dispatch": "capacity", "capacity_factor": 2.0}),
    "smear (4 experts)": ("smear", {"n_experts": 4}),
  }


def model_config(ffn: str, options: dict, *, d_model: int, d_ff: int, n_layers: int):
  cfg = common.base_config().model
  cfg.d_model, cfg.d_ff, cfg.vocab_size = d_model, d_ff, 256
  cfg.blocks = f"(none, ffn) * {n_layers}"
  cfg.options = {"ffn": {"layer": ffn, **options}}
  return cfg


def measure(name: str, cfg, batch: int, seq: int, repeats: int) -> dict:
  model = LM(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)

  def loss_fn(params, rest, tokens):
    m = nnx.merge(graphdef, params, rest)
    logits, aux, _ = nnx.capture(m, AuxLoss, LayerMetric)(tokens[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return ce + sum(jax.tree.leaves(aux))

  step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, rest, tokens).compile()
  jax.block_until_ready(step(params, rest, tokens))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, rest, tokens))
    times.append(time.perf_counter() - start)
  sec = statistics.median(times)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  return {"variant": name, "seconds": sec, "tokens_per_s": batch * seq / sec, "params": int(n_params)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 7; quick 3)")
  parser.add_argument("--out", default="runs/benchmarks/moe.json")
  args = parser.parse_args(argv)
  if args.quick:
    shape = dict(d_model=128, d_ff=512, n_layers=2, batch=4, seq=128)
  else:
    shape = dict(d_model=256, d_ff=1024, n_layers=4, batch=8, seq=256)
  repeats = args.repeats or (3 if args.quick else 7)

  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}  |  jax {jax.__version__}  "
        f"flax {flax.__version__}  python {platform.python_version()}")
  print(f"shape: {shape}  experts={N_EXPERTS} top_k={TOP_K}  repeats={repeats} (median)")
  rows = []
  for name, (ffn, options) in variants(shape["d_ff"]).items():
    cfg = model_config(ffn, options, d_model=shape["d_model"], d_ff=shape["d_ff"], n_layers=shape["n_layers"])
    rows.append(measure(name, cfg, shape["batch"], shape["seq"], repeats))
  dense = rows[0]["tokens_per_s"]
  print(f"{'variant':<20} {'ms/step':>9} {'tokens/s':>11} {'params':>10} {'vs dense':>9}")
  for r in rows:
    r["vs_dense"] = r["tokens_per_s"] / dense
    print(f"{r['variant']:<20} {1e3 * r['seconds']:>9.2f} {r['tokens_per_s']:>11.0f} {r['params']:>10d} "
          f"{r['vs_dense']:>8.2f}x")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"device": f"{device.platform} {device.device_kind}", "jax": jax.__version__,
          "flax": flax.__version__, "shape": shape, "n_experts": N_EXPERTS, "top_k": TOP_K,
          "repeats": repeats}
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
