"""Mixture of experts: training-step throughput vs a dense feed-forward, and expert-parallel memory.

Throughput: feed-forward-only LMs (models.lm with blocks "(none, FFN) * L", so the FFN dominates):
dense SwiGLU of width d_ff vs MoE with 8 experts, top-2, expert width d_ff / 2 (equal active
parameters), with dropless (sort + tiled matmul or ragged_dot) and capacity-factor dispatch, a
DeepSeek-V3-style layer (16 experts of width d_ff / 5, top-4 in 4 groups, 1 shared, sigmoid,
auxiliary-loss-free bias; equal active parameters), SMEAR, SMoE-Dropout at both ends of its schedule (8
SwiGLU experts of width d_ff / 8, k = 8 and k = 4, fixed), Finedeep (2 sub-layers x 4 experts, all active),
and MoHD (8 of 16 hidden sub-dimensions active, of a SwiGLU of width 2 d_ff, or of width d_ff: the
compression setting, in the grouped fast form and in the masked specification, which computes every
sub-dimension). "vs eq-active dense" divides by the dense SwiGLU of the same active ffn parameters:
width d_ff, or d_ff / 2 for SMoE-Dropout at k = 4 and MoHD compressed. One step = forward + backward of
cross-entropy + aux losses (no optimizer update), jitted; every variant is compiled and warmed up first,
then timed in turns (one step of each per round; robust to load changes on a shared machine); time is the
median over the rounds, on device 0, float32.

Expert parallelism (8 fake CPU devices, mesh data=1 x expert=8): one MoE layer's forward + backward,
compiled per device, for the dropless ragged exchange vs capacity buffers sized for no drops
(C = local tokens, E x n rows, the path dropless expert parallelism used before): XLA's compiled
memory (temporaries) and the largest token buffer, against the routed rows of the 8 devices (n x k x 8).
On CPU the experts run as the tiled grouped matmul, whose per-tile copies of the expert weights (and
their gradients) are part of the dropless path's temporaries; `ragged_dot` (GPU / TPU) has none.

  python -m benchmarks.moe [--quick] [--part throughput|expert_parallel|all] [--out runs/benchmarks/moe.json]
"""

import argparse
import json
import math
import pathlib
import platform
import re

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AxisType

from benchmarks import timing
from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from models.lm import LM, lm_model_config

jax.config.update("jax_num_cpu_devices", 8)  # the expert-parallel part; before any backend starts

N_EXPERTS, TOP_K = 8, 2


DENSE, DENSE_HALF = "dense swiglu", "dense swiglu d_ff/2"
HALF_ACTIVE = ("smoe-dropout k=4/8", "mohd 8/16 (compress)", "mohd 8/16 (compress, masked)")  # ffn of DENSE_HALF


def variants(d_ff: int) -> dict[str, tuple[str, dict]]:
  """name -> (ffn registry name, options)."""
  moe = dict(n_experts=N_EXPERTS, top_k=TOP_K, expert_hidden=d_ff // TOP_K)
  smoe = dict(n_experts=8, expert_ffn="swiglu", ramp_steps=0)  # k fixed: the schedule's two ends
  return {
    DENSE: ("swiglu", {}),
    DENSE_HALF: ("swiglu", {"hidden": d_ff // 2}),
    "moe dropless tiled": ("moe", {**moe, "dispatch": "dropless", "grouped_matmul": "tiled"}),
    "moe dropless ragged": ("moe", {**moe, "dispatch": "dropless", "grouped_matmul": "ragged_dot"}),
    "moe capacity 1.25": ("moe", {**moe, "dispatch": "capacity", "capacity_factor": 1.25}),
    "moe capacity 2.0": ("moe", {**moe, "dispatch": "capacity", "capacity_factor": 2.0}),
    "deepseek-v3 style": ("moe", dict(n_experts=16, top_k=4, n_shared=1, n_groups=4, top_groups=2, score="sigmoid",
                                      renormalize=True, routed_scale=2.5, bias_update_rate=1e-3,
                                      seq_balance_weight=1e-4, load_balance_weight=0.0)),
    "smear (4 experts)": ("smear", {"n_experts": 4}),
    "smoe-dropout k=8/8": ("smoe_dropout", {**smoe, "top_k_start": 8}),
    HALF_ACTIVE[0]: ("smoe_dropout", {**smoe, "top_k_start": 4}),
    "finedeep 2x4": ("finedeep", {"n_sublayers": 2, "n_experts": 4}),
    "mohd 8/16 of 2 d_ff": ("mohd", {"n_subdims": 16, "active_fraction": 0.5, "hidden": 2 * d_ff}),
    HALF_ACTIVE[1]: ("mohd", {"n_subdims": 16, "active_fraction": 0.5}),
    HALF_ACTIVE[2]: ("mohd", {"n_subdims": 16, "active_fraction": 0.5, "mode": "masked"}),
  }


def model_config(ffn: str, options: dict, *, d_model: int, d_ff: int, n_layers: int):
  cfg = lm_model_config()
  cfg.d_model, cfg.d_ff, cfg.vocab_size = d_model, d_ff, 256
  cfg.blocks = f"(none, ffn) * {n_layers}"
  cfg.options = {"ffn": {"layer": ffn, **options}}
  return cfg


def compiled_step(cfg, batch: int, seq: int):
  """(one timed training step of the LM `cfg`: a () -> None callable, its parameter count)."""
  graphdef, params, rest = nnx.split(LM(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # fresh variables inside the trace
  tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)

  def loss_fn(params, rest, tokens):
    m = nnx.merge(graphdef, params, rest)
    logits, aux, _ = nnx.capture(m, AuxLoss, LayerMetric)(tokens[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return ce + sum(jax.tree.leaves(aux))

  step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, rest, tokens).compile()
  jax.block_until_ready(step(params, rest, tokens))
  return (lambda: jax.block_until_ready(step(params, rest, tokens))), sum(p.size for p in jax.tree.leaves(params))


def throughput(quick: bool, repeats: int) -> dict:
  """Every variant compiled first, then timed in turns (one step of each per round), so a change of load on a
  shared machine hits all rows alike; the median over rounds."""
  shape = (dict(d_model=128, d_ff=512, n_layers=2, batch=4, seq=128) if quick
           else dict(d_model=256, d_ff=1024, n_layers=4, batch=8, seq=256))
  print(f"\nthroughput, device 0: {shape}  repeats={repeats} (median, variants timed in turns)")
  steps = {}
  for name, (ffn, options) in variants(shape["d_ff"]).items():
    cfg = model_config(ffn, options, d_model=shape["d_model"], d_ff=shape["d_ff"], n_layers=shape["n_layers"])
    steps[name] = compiled_step(cfg, shape["batch"], shape["seq"])
  times = timing.interleaved({name: run for name, (run, _) in steps.items()}, repeats, warmup=False)
  rows = []
  for name, (_, n_params) in steps.items():
    sec = times[name].median
    rows.append({"variant": name, "seconds": sec, "tokens_per_s": shape["batch"] * shape["seq"] / sec,
                 "params": int(n_params)})
  by_name = {r["variant"]: r["tokens_per_s"] for r in rows}
  print(f"{'variant':<22} {'ms/step':>9} {'tokens/s':>11} {'params':>10} {'vs dense':>9} {'vs eq-active dense':>19}")
  for r in rows:
    r["vs_dense"] = r["tokens_per_s"] / by_name[DENSE]
    r["equal_active_dense"] = DENSE_HALF if r["variant"] in HALF_ACTIVE else DENSE
    r["vs_equal_active_dense"] = r["tokens_per_s"] / by_name[r["equal_active_dense"]]
    print(f"{r['variant']:<22} {1e3 * r['seconds']:>9.2f} {r['tokens_per_s']:>11.0f} {r['params']:>10d} "
          f"{r['vs_dense']:>8.2f}x {r['vs_equal_active_dense']:>18.2f}x")
  return {"shape": shape, "rows": rows}


def _largest_token_buffer(hlo: str, widths: tuple[int, int]) -> int:
  """Rows of the largest [..., D] / [..., F] array of the per-device HLO that is not a weight [.., D, F]."""
  largest = 0
  for dims in re.findall(r"f32\[([\d,]+)\]", hlo):
    shape = [int(d) for d in dims.split(",")]
    if len(shape) >= 2 and shape[-1] in widths and shape[-2] not in widths:
      largest = max(largest, math.prod(shape[:-1]))
  return largest


def expert_parallel_memory(quick: bool) -> dict | None:
  if jax.default_backend() != "cpu":
    print("\nexpert parallelism: measured on 8 fake CPU devices; run with JAX_PLATFORMS=cpu")
    return None
  ep = 8
  d, f, n_local, tile = (64, 96, 64, 32) if quick else (256, 384, 512, 128)
  mesh = jax.make_mesh((1, ep), ("data", "expert"), axis_types=(AxisType.Auto,) * 2)
  x = jax.random.normal(jax.random.key(0), (ep * n_local // 8, 8, d))
  print(f"\nexpert parallelism, {ep} fake CPU devices: d_model={d}, expert width={f}, {n_local} tokens per device, "
        f"tiled grouped matmul (tile {tile})")
  print(f"{'experts':>7} {'top_k':>5} {'path':<24} {'temp MiB':>9} {'vs capacity':>11} {'largest rows':>13} "
        f"{'routed rows':>12}")
  rows = []
  for n_experts, k in ((16, 2), (64, 2), (64, 6)):
    paths = {"capacity C=n (no drops)": dict(dispatch="capacity", capacity_factor=n_experts / k),
             "dropless ragged": dict(dispatch="dropless")}
    for path, options in paths.items():
      layer = registry.build("ffn", "moe", LayerContext(d_model=d, d_ff=2 * f), rngs=nnx.Rngs(0), n_experts=n_experts,
                             top_k=k, expert_hidden=f, grouped_matmul="tiled", tile_size=tile, **options)
      graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

      def loss(params, x, graphdef=graphdef, rest=rest):
        y, aux, _ = nnx.capture(nnx.merge(graphdef, params, rest), AuxLoss, LayerMetric)(x)
        return jnp.sum(y * y) + sum(jax.tree.leaves(aux))

      with jax.set_mesh(mesh):
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
      row = {"n_experts": n_experts, "top_k": k, "path": path,
             "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
             "largest_token_buffer_rows": _largest_token_buffer(compiled.as_text(), (d, f)),
             "routed_rows": ep * n_local * k}
      baseline = rows[-1]["temp_bytes"] if path == "dropless ragged" else row["temp_bytes"]  # capacity runs first
      row["vs_capacity"] = row["temp_bytes"] / baseline
      rows.append(row)
      print(f"{n_experts:>7} {k:>5} {path:<24} {row['temp_bytes'] / 2**20:>9.1f} {row['vs_capacity']:>10.2f}x "
            f"{row['largest_token_buffer_rows']:>13} {row['routed_rows']:>12}")
  return {"shape": dict(d_model=d, expert_hidden=f, tokens_per_device=n_local, devices=ep, tile=tile), "rows": rows}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
  parser.add_argument("--part", choices=("throughput", "expert_parallel", "all"), default="all")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 7; quick 3)")
  parser.add_argument("--out", default="runs/benchmarks/moe.json")
  args = parser.parse_args(argv)
  repeats = args.repeats or (3 if args.quick else 7)
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}  |  jax {jax.__version__}  "
        f"flax {flax.__version__}  python {platform.python_version()}")
  out = {"meta": {"device": f"{device.platform} {device.device_kind}", "jax": jax.__version__,
                  "flax": flax.__version__, "quick": args.quick, "repeats": repeats}}
  if args.part in ("throughput", "all"):
    out["throughput"] = throughput(args.quick, repeats)
  if args.part in ("expert_parallel", "all"):
    out["expert_parallel"] = expert_parallel_memory(args.quick)
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
