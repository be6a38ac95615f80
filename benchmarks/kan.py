"""Forward+backward time and memory of the B-spline KAN layer, KAN feed-forwards and Fourier-KArAt.

    python -m benchmarks.kan                 # the issues' settings (below)
    python -m benchmarks.kan --quick         # small shapes, for a CPU smoke run
    python -m benchmarks.kan --dtype bfloat16 --out runs/benchmarks/kan_gpu.json
    python -m benchmarks.kan --tables spline          # only the spline-layer table (also: profile, ffn, mixer)

Three tables, each against its baseline row:
* spline layer: one B-spline KAN layer (8192 x 256 -> 256, G = 5, k = 3) vs a dense layer of the same
  shape and vs the public JAX KAN library's spline layer (jaxkan `SplineLayer`, the efficient-KAN
  formulation with autodiff through Cox-de Boor). The anchor is installed, never vendored:
  `pip install -e '.[bench]'` (or `pip install 'jaxkan>=0.3.7,<0.4'`); without it that row is skipped.
* ffn: feed-forwards at equal parameter counts (tokens 8192, d = 512; MLP d_ff = 4d; B-spline / Fourier /
  AF-KAN / S-KAN hidden widths divided by their per-edge weights (S-KAN: summed over its four spaces, before
  pruning); GR-KAN as KAT and the parameter-reduced AF-KAN: the MLP's widths plus a few coefficients), vs the
  GELU MLP.
* mixer: Fourier-KArAt vs softmax attention (T = 256 tokens per sequence).
* profile (not in the default set): where the spline layer's step goes, vs the dense step: the features
  alone (silu and the bases), the forward, the step without and with the input gradient.
A row is the median of `--repeats` timed runs of one jitted step (gradients of the loss sum(output²) / 2
w.r.t. every parameter and the input: a loss whose gradient needs the forward output, as training's does;
with a linear loss such as sum(output) XLA drops the last matmul of the forward) after a warm-up, the rows
of a table interleaved (round robin) so that load drift on a shared machine hits them alike; the process's
CPU time per step is reported beside the wall time (the steadier number when other jobs share the cores).
Memory is XLA's compiled temp allocation of the step (and the device's peak where the backend reports one).
"""

import argparse
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
from layers.core import Linear
from layers.kan import functional
from layers.kan.kan_linear import KANLinear

FFNS = {
  "mlp (gelu)": ("mlp", {}),
  "gr_kan": ("gr_kan", {}),
  "kan (b-spline)": ("kan", {}),
  "fourier_kan": ("fourier_kan", {}),
  "af_kan": ("af_kan", {}),
  "af_kan (reduced)": ("af_kan", {"reduction": "global_attn"}),
  "s_kan": ("s_kan", {}),
}
MIXERS = {
  "softmax attention": ("karat", {"operator": "softmax"}),
  "fourier-karat": ("karat", {"operator": "fourier_kan"}),
}


def spline_layers(width: int, grid_size: int, order: int, anchor: bool = True) -> dict:
  """label -> module: dense, ours, and (`anchor`) the jaxkan anchor when it is installed."""
  layers = {
    "dense": Linear(width, width, use_bias=True, rngs=nnx.Rngs(0)),
    "kan_linear (ours)": KANLinear(width, width, grid_size=grid_size, order=order, rngs=nnx.Rngs(0)),
  }
  if not anchor:
    return layers
  try:
    from jaxkan.layers.Spline import SplineLayer
  except ImportError:
    print("jaxkan not installed (pip install -e '.[bench]'): its row is skipped")
  else:
    layers["jaxkan SplineLayer"] = SplineLayer(n_in=width, n_out=width, k=order, G=grid_size)
  return layers


def n_params(module: nnx.Module) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


def compile_fn(fn, *args) -> dict:
  """jit(fn) compiled for args and warmed up: its runner and compiled temp MiB."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  return {"run": lambda: compiled(*args), "temp_mib": timing.temp_mib(compiled)}


def compile_step(module: nnx.Module, x: jax.Array, argnums: tuple[int, ...] = (0, 1)) -> dict:
  """The compiled fwd+bwd step of `module` on x (gradients to the parameters (0) and the input (1))."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def loss(params, x):
    return 0.5 * jnp.sum(jnp.square(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32)))

  return {**compile_fn(jax.grad(loss, argnums=argnums), params, x), "params": n_params(module)}


def spline_profile(dense: Linear, layer: KANLinear, x: jax.Array) -> list[tuple[str, dict]]:
  """Where the spline layer's step goes: the dense step (the base), then the layer's features (silu and the
  bases, [N, G+k+1, in]), its forward (features and the matmul), its step with the parameters' gradients
  only (no input gradient) and with both."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  return [
    ("dense (fwd+bwd)", compile_step(dense, x)),
    ("features", {**compile_fn(lambda x, g: functional.kan_features(x, g, layer.order), x, layer.grid[...]),
                  "params": 0}),
    ("forward", {**compile_fn(lambda p, x: nnx.merge(graphdef, p, rest)(x), params, x), "params": n_params(layer)}),
    ("fwd+bwd, d params", compile_step(layer, x, argnums=(0,))),
    ("fwd+bwd, d params, dx", compile_step(layer, x)),
  ]


def time_rows(rows: list[dict], repeats: int) -> None:
  """Median wall and CPU ms of each row, the rows interleaved."""
  times = timing.interleaved({i: r["run"] for i, r in enumerate(rows)}, repeats, warmup=False)
  for i, r in enumerate(rows):
    del r["run"]
    t, c = [s * 1e3 for s in times[i].wall], [s * 1e3 for s in times[i].cpu]
    r["ms"], r["ms_all"], r["cpu_ms"], r["cpu_ms_all"] = statistics.median(t), t, statistics.median(c), c


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="small shapes (tokens 1024, d=128)")
  p.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--out", default="runs/benchmarks/kan.json")
  p.add_argument("--tables", default="spline,ffn,mixer",
                 help="comma-separated subset of spline, profile, ffn, mixer")
  args = p.parse_args()
  wanted = set(args.tables.split(","))
  if not wanted <= {"spline", "profile", "ffn", "mixer"}:
    raise SystemExit(f"--tables takes spline, profile, ffn, mixer; got {args.tables}")
  tokens, d, heads, T, width = (1024, 128, 4, 128, 64) if args.quick else (8192, 512, 8, 256, 256)
  dtype = jnp.dtype(args.dtype)
  ctx = LayerContext(d_model=d, n_heads=heads, d_ff=4 * d, activation="gelu", dtype=dtype)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"flax {flax.__version__}, python {platform.python_version()}, dtype {dtype.name}, "
        f"tokens {tokens}, d {d}, spline layer {tokens} x {width} (G=5, k=3), median of {args.repeats}")
  key = jax.random.key(0)
  tables = {}
  if "spline" in wanted:
    tables["spline layer"] = [(label, m, jax.random.uniform(key, (tokens, width), dtype, -1.0, 1.0))
                              for label, m in spline_layers(width, 5, 3).items()]
  for kind, table, shape in (("ffn", FFNS, (tokens, d)), ("mixer", MIXERS, (tokens // T, T, d))):
    if kind not in wanted:
      continue
    x = jax.random.normal(key, shape, dtype)
    extra = {"max_len": T} if kind == "mixer" else {}
    tables[kind] = [(label, registry.build(kind, name, ctx, rngs=nnx.Rngs(0), **options, **extra), x)
                    for label, (name, options) in table.items()]
  compiled = {kind: [(label, compile_step(module, x)) for label, module, x in entries]
              for kind, entries in tables.items()}
  if "profile" in wanted:
    layers = spline_layers(width, 5, 3, anchor=False)
    compiled["spline profile"] = spline_profile(layers["dense"], layers["kan_linear (ours)"],
                                                jax.random.uniform(key, (tokens, width), dtype, -1.0, 1.0))
  rows = []
  for kind, entries in compiled.items():
    table = [{"kind": kind, "layer": label, **step} for label, step in entries]
    time_rows(table, args.repeats)
    rows += table
  anchor = next((r for r in rows if r["layer"] == "jaxkan SplineLayer"), None)
  print(f"{'layer':<24} {'params':>10} {'ms(fwd+bwd)':>12} {'tokens/s':>12} {'temp MiB':>10} {'vs base':>8} "
        f"{'cpu ms':>9} {'vs base':>8} {'vs jaxkan':>10}")
  for kind in compiled:
    base = next(r for r in rows if r["kind"] == kind)
    for r in (r for r in rows if r["kind"] == kind):
      r["tokens_per_s"] = tokens / (r["ms"] / 1e3)
      r["ratio"], r["cpu_ratio"] = r["ms"] / base["ms"], r["cpu_ms"] / base["cpu_ms"]
      vs = f"{r['ms'] / anchor['ms']:>9.2f}x" if kind == "spline layer" and anchor else ""
      print(f"{r['layer']:<24} {r['params']:>10,} {r['ms']:>12.3f} {r['tokens_per_s']:>12,.0f} "
            f"{r['temp_mib']:>10.1f} {r['ratio']:>7.2f}x {r['cpu_ms']:>9.1f} {r['cpu_ratio']:>7.2f}x {vs}")
  stats = device.memory_stats() or {}
  peak = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
    "device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
    "flax": flax.__version__, "dtype": dtype.name, "tokens": tokens, "d_model": d, "seq_len": T,
    "spline_width": width, "peak_device_mib": peak, "rows": rows,
  }, indent=2))
  print(f"(vs base: spline and profile rows vs dense, ffn rows vs the GELU MLP, mixer rows vs softmax attention; "
        f"device peak MiB {peak}) -> {out}")


if __name__ == "__main__":
  main()
