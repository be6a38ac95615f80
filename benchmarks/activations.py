"""Forward+backward cost of learnable activations: in an FFN block, and on their own.

    python -m benchmarks.activations                # d=1024, hidden 4d, 8192 tokens (the issue's setting)
    python -m benchmarks.activations --quick        # d=256, 1024 tokens: a CPU smoke run
    python -m benchmarks.activations --dtype bfloat16 --out runs/benchmarks/activations_gpu.json
    python -m benchmarks.activations --only "gelu,rational (A 5/4)"   # a subset of rows (GELU always first)

A second table times the norm-activation layers (EvoNorm-B0 / S0) against the LayerNorm + GELU they replace.

Every block is a registry feed-forward with hidden = 4d: `mlp` with the activation named in the
row, `swiglu` for SwiGLU (three matrices, so 1.5x the matmul work of the others). A row is the
median of `--repeats` timed runs of one jitted step (gradients of the loss sum(output²) / 2 w.r.t. all
parameters and the input: a loss whose gradient needs the forward output, as training's does; with a
linear loss such as sum(output) XLA drops the block's last matmul and the activation's forward value)
after a warm-up run; the rows' runs are interleaved (round robin), so a machine shared with other jobs
slows every row alike, and the process's CPU time per step is reported beside the wall time (the steadier
number under load; on an idle machine wall time also shows how well a step uses every core). "act only"
times the same step for the activation alone on the [tokens, 4d] hidden tensor. Memory is XLA's compiled
temp allocation of the block step (and the device's peak where the backend reports one). Ratios are to
the GELU row.
"""

import argparse
import functools
import json
import pathlib
import platform
import statistics

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import timing
from layers import registry
from layers.context import LayerContext

# label: (ffn name, ffn options)
BLOCKS = {
  "gelu": ("mlp", {"activation": "gelu"}),
  "swiglu": ("swiglu", {}),
  "rational (A 5/4)": ("mlp", {"activation": "rational"}),
  "group_rational (G=8)": ("mlp", {"activation": "group_rational", "activation_options": {"groups": 8}}),
  "polynorm": ("mlp", {"activation": "polynorm"}),
  "polyrelu": ("mlp", {"activation": "polyrelu"}),
  **{name: ("mlp", {"activation": name}) for name in ("apa", "aglu", "crrelu", "smelu", "generalized_smelu",
                                                       "helu", "snake", "sine", "velu")},
}
# label: (norm, activation after it): the norm-activation layers vs the norm + GELU they replace, on the hidden
# tensor as [8, tokens / 8, 4d] (EvoNorm-B0 needs token axes for its instance variance)
NORM_ACTS = {
  "layernorm + gelu": ("layernorm", "gelu"),
  "evonorm_b0": ("evonorm_b0", "identity"),
  "evonorm_s0": ("evonorm_s0", "identity"),
}


def compiled_step(fn, args: tuple) -> tuple:
  """(compiled jit(grad(sum(fn(*args)²) / 2)) w.r.t. every argument, its args, compiled temp MiB)."""
  step = jax.jit(jax.grad(lambda *a: 0.5 * jnp.sum(jnp.square(fn(*a).astype(jnp.float32))),
                          argnums=tuple(range(len(args)))))
  compiled = step.lower(*args).compile()
  jax.block_until_ready(compiled(*args))  # warm-up
  return compiled, args, timing.temp_mib(compiled)


def build(label: str, ffn: str, options: dict, ctx: LayerContext, x: jax.Array) -> dict:
  """The compiled block step and activation-only step of one row."""
  block = registry.build("ffn", ffn, ctx, rngs=nnx.Rngs(0), **options)
  graphdef, params = nnx.split(block, nnx.Param)
  n_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  block_step = compiled_step(lambda p, x: nnx.merge(graphdef, p)(x), (params, x))
  act = registry.build("activation", options.get("activation", "silu"), ctx.with_features(ctx.d_ff),
                       rngs=nnx.Rngs(0), **options.get("activation_options", {}))
  h = jax.random.normal(jax.random.key(1), (*x.shape[:-1], ctx.d_ff), x.dtype)
  if isinstance(act, nnx.Module):
    act_def, act_params = nnx.split(act, nnx.Param)
    act_step = compiled_step(lambda p, h: nnx.merge(act_def, p)(h), (act_params, h))
  else:
    act_step = compiled_step(act, (h,))
  return {"block": label, "params": n_params, "temp_mib": block_step[2], "steps": (block_step, act_step)}


def build_norm(label: str, norm: str, activation: str, ctx: LayerContext, h: jax.Array) -> dict:
  """The compiled step of a registry norm followed by an activation on h [B, T, F]."""
  ctx = ctx.with_features(h.shape[-1])
  graphdef, params, rest = nnx.split(registry.build("norm", norm, ctx, rngs=nnx.Rngs(0)), nnx.Param, ...)
  act = registry.build("activation", activation, ctx, rngs=nnx.Rngs(0))
  # rest (EvoNorm-B0's running variance, updated in training mode) is traced too: its gradient is zero
  step = compiled_step(lambda p, r, h: act(nnx.merge(graphdef, p, r)(h)), (params, rest, h))
  n_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  return {"block": label, "params": n_params, "temp_mib": step[2], "steps": (step,)}


def time_all(rows: list[dict], repeats: int) -> None:
  """Median wall and CPU ms of each row's steps (the block or norm step, then the activation alone),
  interleaving the rows so that load drift hits all of them alike."""
  runs = {(i, j): functools.partial(compiled, *args) for i, row in enumerate(rows)
          for j, (compiled, args, _) in enumerate(row["steps"])}
  times = timing.interleaved(runs, repeats, warmup=False)
  for (i, j), t in times.items():
    prefix = ("", "act_")[j]
    wall = [s * 1e3 for s in t.wall]
    rows[i].update({f"{prefix}ms": statistics.median(wall), f"{prefix}cpu_ms": t.median_cpu * 1e3,
                    f"{prefix}ms_all": wall})
  for row in rows:
    del row["steps"]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="d=256, 1024 tokens")
  p.add_argument("--dtype", default="float32", help="compute dtype (parameters stay float32)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="runs/benchmarks/activations.json")
  p.add_argument("--only", default="", help="comma-separated row labels to run (the GELU baseline always runs)")
  args = p.parse_args()
  only = {"gelu", *args.only.split(",")} if args.only else {*BLOCKS, *NORM_ACTS}
  unknown = only - {*BLOCKS, *NORM_ACTS}
  if unknown:
    raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {[*BLOCKS, *NORM_ACTS]}")
  if only & set(NORM_ACTS):
    only.add("layernorm + gelu")
  tokens, d = (1024, 256) if args.quick else (8192, 1024)
  dtype = jnp.dtype(args.dtype)
  ctx = LayerContext(d_model=d, d_ff=4 * d, dtype=dtype)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} devices), "
        f"jax {jax.__version__}, flax {flax.__version__}, python {platform.python_version()}, "
        f"dtype {dtype.name}, tokens {tokens}, d {d}, hidden {4 * d}, median of {args.repeats}")
  x = jax.random.normal(jax.random.key(0), (tokens, d), dtype)
  rows = [build(label, ffn, options, ctx, x) for label, (ffn, options) in BLOCKS.items() if label in only]
  h = jax.random.normal(jax.random.key(1), (8, tokens // 8, 4 * d), dtype)
  norm_rows = [build_norm(label, norm, act, ctx, h) for label, (norm, act) in NORM_ACTS.items() if label in only]
  time_all(rows + norm_rows, args.repeats)
  base = rows[0]
  print(f"{'block':<22} {'params':>11} {'ms(fwd+bwd)':>12} {'tokens/s':>11} {'temp MiB':>9} {'vs gelu':>8} "
        f"{'cpu ms':>9} {'vs gelu':>8} {'act only ms':>12} {'vs gelu':>8} {'act cpu ms':>11} {'vs gelu':>8}")
  for r in rows:
    r["tokens_per_s"] = tokens / (r["ms"] / 1e3)
    for key in ("ms", "cpu_ms", "act_ms", "act_cpu_ms"):
      r[key.replace("ms", "ratio")] = r[key] / base[key]
    print(f"{r['block']:<22} {r['params']:>11,} {r['ms']:>12.2f} {r['tokens_per_s']:>11,.0f} "
          f"{r['temp_mib']:>9.1f} {r['ratio']:>7.2f}x {r['cpu_ms']:>9.1f} {r['cpu_ratio']:>7.2f}x "
          f"{r['act_ms']:>12.2f} {r['act_ratio']:>7.2f}x {r['act_cpu_ms']:>11.1f} {r['act_cpu_ratio']:>7.2f}x")
  if norm_rows:
    print(f"\n{'norm-activation':<22} {'params':>11} {'ms(fwd+bwd)':>12} {'vs ln+gelu':>11} {'cpu ms':>9} "
          f"{'vs ln+gelu':>11}   (on the [8, {tokens // 8}, {4 * d}] hidden tensor)")
    for r in norm_rows:
      r["ratio"], r["cpu_ratio"] = r["ms"] / norm_rows[0]["ms"], r["cpu_ms"] / norm_rows[0]["cpu_ms"]
      print(f"{r['block']:<22} {r['params']:>11,} {r['ms']:>12.2f} {r['ratio']:>10.2f}x {r['cpu_ms']:>9.1f} "
            f"{r['cpu_ratio']:>10.2f}x")
  stats = device.memory_stats() or {}
  peak = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
    "device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
    "flax": flax.__version__, "python": platform.python_version(), "dtype": dtype.name, "tokens": tokens,
    "d_model": d, "hidden": 4 * d, "repeats": args.repeats, "peak_device_mib": peak, "rows": rows,
    "norm_rows": norm_rows,
  }, indent=2))
  print(f"(device peak MiB: {peak}) -> {out}")


if __name__ == "__main__":
  main()
