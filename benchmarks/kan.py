"""Forward+backward time and memory of KAN feed-forwards vs an MLP, and of Fourier-KArAt vs softmax attention.

    python -m benchmarks.kan                 # tokens 8192, d=512 (the issue's setting)
    python -m benchmarks.kan --quick         # small shapes, for a CPU smoke run
    python -m benchmarks.kan --dtype bfloat16 --out runs/benchmarks/kan_gpu.json

Feed-forwards have equal parameter counts (MLP d_ff = 4d; B-spline / Fourier KAN hidden widths
divided by their per-edge weights; GR-KAN as KAT: same widths as the MLP plus a few rational
coefficients). Attention rows use T = 256 tokens per sequence. Each row is the median of
`--repeats` timed runs of one jitted step (grads of sum(output) w.r.t. parameters and input)
after a warm-up; memory is XLA's compiled temp allocation (and the device's peak where reported).
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers import registry
from layers.context import LayerContext

FFNS = {
  "mlp (gelu)": ("mlp", {}),
  "gr_kan": ("gr_kan", {}),
  "kan (b-spline)": ("kan", {}),
  "fourier_kan": ("fourier_kan", {}),
}
MIXERS = {
  "softmax attention": ("karat", {"operator": "softmax"}),
  "fourier-karat": ("karat", {"operator": "fourier_kan"}),
}


def n_params(module: nnx.Module) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


def measure(module: nnx.Module, x: jax.Array, repeats: int) -> dict:
  """Median ms of one jitted fwd+bwd, compiled temp MiB, parameter count."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  @jax.jit
  def step(params, x):
    def loss(params, x):
      return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1))(params, x)

  compiled = step.lower(params, x).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
  jax.block_until_ready(compiled(params, x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append((time.perf_counter() - t0) * 1e3)
  return {"ms": statistics.median(times), "temp_mib": temp / 2**20, "params": n_params(module)}


def peak_mib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="small shapes (tokens 1024, d=128)")
  p.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--out", default="runs/benchmarks/kan.json")
  args = p.parse_args()
  tokens, d, heads, T = (1024, 128, 4, 128) if args.quick else (8192, 512, 8, 256)
  dtype = jnp.dtype(args.dtype)
  ctx = LayerContext(d_model=d, n_heads=heads, d_ff=4 * d, activation="gelu", dtype=dtype)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"flax {flax.__version__}, python {platform.python_version()}, dtype {dtype.name}, "
        f"tokens {tokens}, d {d}")
  rows = []
  key = jax.random.key(0)
  for kind, table, shape in (("ffn", FFNS, (tokens, d)), ("mixer", MIXERS, (tokens // T, T, d))):
    x = jax.random.normal(key, shape, dtype)
    for label, (name, options) in table.items():
      extra = {"max_len": T} if kind == "mixer" else {}
      module = registry.build(kind, name, ctx, rngs=nnx.Rngs(0), **options, **extra)
      rows.append({"kind": kind, "layer": label, **measure(module, x, args.repeats)})
  base = {kind: next(r for r in rows if r["kind"] == kind) for kind in ("ffn", "mixer")}
  print(f"{'layer':<20} {'params':>10} {'ms(fwd+bwd)':>12} {'tokens/s':>12} {'temp MiB':>10} {'vs base':>8}")
  for r in rows:
    r["tokens_per_s"] = tokens / (r["ms"] / 1e3)
    r["ratio"] = r["ms"] / base[r["kind"]]["ms"]
    print(f"{r['layer']:<20} {r['params']:>10,} {r['ms']:>12.3f} {r['tokens_per_s']:>12,.0f} "
          f"{r['temp_mib']:>10.1f} {r['ratio']:>7.2f}x")
  peak = peak_mib()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
    "device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
    "flax": flax.__version__, "dtype": dtype.name, "tokens": tokens, "d_model": d, "seq_len": T,
    "peak_device_mib": peak, "rows": rows,
  }, indent=2))
  print(f"(ratios: ffn rows vs mlp, mixer rows vs softmax attention; device peak MiB {peak}) -> {out}")


if __name__ == "__main__":
  main()
