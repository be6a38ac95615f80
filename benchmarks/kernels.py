"""The kernels of issue 17 side by side with their public anchors, forward + backward, in one run.

    python -m benchmarks.kernels              # the issue's shapes (below)
    python -m benchmarks.kernels --quick      # small shapes: a CPU smoke run
    python -m benchmarks.kernels --tables delta,spline   # a subset of delta, dplr, rational, spline

Four tables, each against its first row and its anchor (the public code, or jax GELU), with compiled peak
memory:
* delta: chunked gated delta rule, B=1 H=4 K=V=64 T=4096 fp32, gradients to q, k, v, g, beta: ours
  (`gated_delta_rule`, chunk 64; on CPU also its C++ kernel of the recurrent form, implementation="cpu") vs the
  public pure-JAX one of a large JAX LLM framework (MaxText's Qwen3-Next `jax_chunk_gated_delta_rule`,
  compute_dtype float32); their outputs are compared first.
  Below it, compiled peak memory only (not run) at T=16384 for both.
* dplr: the DPLR delta rule (RWKV-7), same shapes and chunk, gradients to q, k, v, a, b, gk: its recompute-based
  custom VJP vs XLA autodiff of the same chunk form (the op before it had one); T=16384 peak memory below.
* rational: PAU version A 5/4 on [8192, 4096] with coefficient gradients vs jax GELU; on CPU also the op's XLA
  form (ABLAX_CPU_KERNELS=0) beside its C++ kernel (`layers/activations/rational_cpu.py`).
* spline: one B-spline KAN layer 8192 x 256 -> 256 (G=5, k=3), gradients to parameters and input, vs a
  dense layer and vs the public JAX KAN library's `SplineLayer` (benchmarks.kan's rows).
A row is the median of `--repeats` timed runs of one jitted step (gradients of sum(out²) / 2) after a
warm-up, the rows of a table interleaved (benchmarks.kan.time_rows), with the process CPU time beside the
wall time (the steadier number on a shared host). Peak memory is XLA's compiled estimate of the step
(temp + arguments + outputs).

Anchors are fetched, never vendored. MaxText 0.2.5 (Python >= 3.12, so not installed here): its wheel is
downloaded into a cache outside the repository and the one function is loaded from it:
    pip download 'maxtext==0.2.5' --no-deps --python-version 3.12 --only-binary=:all: -d ~/.cache/ablax/anchors
(or pass --fetch-anchors; the cache directory is $ABLAX_ANCHORS). jaxkan: `pip install -e '.[bench]'`.
A missing anchor's row is skipped with a message.
"""

import argparse
import ast
import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import zipfile
from collections.abc import Callable
from unittest import mock

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.kan import spline_layers, time_rows
from layers import linear_attention as la
from layers import registry
from layers.context import LayerContext
from layers.linear_attention.ops import common

MAXTEXT = "maxtext==0.2.5"
MAXTEXT_FILE, MAXTEXT_FUNCTION = "maxtext/models/qwen3.py", "jax_chunk_gated_delta_rule"
dplr = importlib.import_module("layers.linear_attention.ops.dplr_delta_rule")  # the module (the package exports the op)
ANCHORS = pathlib.Path(os.environ.get("ABLAX_ANCHORS", "~/.cache/ablax/anchors")).expanduser()
H, DK, DV, CHUNK = 4, 64, 64, 64
ANCHOR = {"delta": "maxtext jax_chunk_gated_delta_rule", "rational": "jax.nn.gelu", "spline": "jaxkan SplineLayer",
          "dplr": "dplr_delta_rule, autodiff of the chunk form"}


def fetch_anchors() -> None:
  """Download the MaxText wheel (no dependencies, not installed) into ANCHORS."""
  ANCHORS.mkdir(parents=True, exist_ok=True)
  subprocess.run([sys.executable, "-m", "pip", "download", MAXTEXT, "--no-deps", "--python-version", "3.12",
                  "--only-binary=:all:", "-d", str(ANCHORS)], check=True)


def maxtext_gated_delta_rule() -> Callable | None:
  """MaxText's `jax_chunk_gated_delta_rule`, loaded from the cached wheel (None, with a message, if absent).
  The function uses only jax / jnp / lax at the arguments used here, so it runs without MaxText installed."""
  wheels = sorted(ANCHORS.glob("maxtext-0.2.5-*.whl"))
  if not wheels:
    print(f"MaxText wheel not in {ANCHORS}: its rows are skipped (fetch it with --fetch-anchors)")
    return None
  source = zipfile.ZipFile(wheels[0]).read(MAXTEXT_FILE).decode()
  node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == MAXTEXT_FUNCTION)
  namespace = {"jax": jax, "jnp": jnp, "lax": jax.lax, "Array": jax.Array}
  exec(compile(ast.Module([node], type_ignores=[]), f"{wheels[0]}:{MAXTEXT_FILE}", "exec"), namespace)
  return namespace[MAXTEXT_FUNCTION]


def compile_row(label: str, fn: Callable, args: tuple, run: bool = True) -> dict:
  """jit(grad(sum(fn(*args)²) / 2)) w.r.t. every argument: compiled, warmed up (if run), with its peak MiB."""
  def loss(*a):
    return 0.5 * sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(fn(*a)))

  compiled = jax.jit(jax.grad(loss, argnums=tuple(range(len(args))))).lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  row = {"layer": label, "peak_mib": peak / 2**20}
  if run:
    jax.block_until_ready(compiled(*args))
    row["run"] = lambda: compiled(*args)
  return row


def delta_inputs(t: int, key: jax.Array) -> tuple[jax.Array, ...]:
  """q, k (L2-normalised), v [1, T, H, 64], log decay g and beta [1, T, H] in the mixer layers' ranges."""
  kq, kk, kv, kg, kb = jax.random.split(key, 5)

  def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  q, k = unit(jax.random.normal(kq, (1, t, H, DK))), unit(jax.random.normal(kk, (1, t, H, DK)))
  v = jax.random.normal(kv, (1, t, H, DV))
  g = jax.nn.log_sigmoid(jax.random.normal(kg, (1, t, H)) + 3.0)
  beta = jax.nn.sigmoid(jax.random.normal(kb, (1, t, H)))
  return q, k, v, g, beta


def delta_rows(t: int, memory_t: int) -> list[dict]:
  def ours(q, k, v, g, beta):
    return la.gated_delta_rule(q, k, v, g, beta, chunk_size=CHUNK)[0]

  anchor = maxtext_gated_delta_rule()
  fns = {}
  if anchor is not None:
    fns[ANCHOR["delta"]] = lambda *a: anchor(*a, chunk_size=CHUNK, compute_dtype=jnp.float32)[0]
  fns["gated_delta_rule (ours)"] = ours
  if jax.default_backend() == "cpu":
    fns["gated_delta_rule (ours, C++ recurrent kernel)"] = lambda q, k, v, g, beta: la.gated_delta_rule(
        q, k, v, g, beta, mode="recurrent", implementation="cpu")[0]
  args = delta_inputs(t, jax.random.key(0))
  if anchor is not None:
    o, o_ref = jax.jit(ours)(*args), jax.jit(fns[ANCHOR["delta"]])(*args)
    err = float(jnp.sqrt(jnp.mean((o - o_ref) ** 2) / jnp.mean(o_ref**2)))
    print(f"delta: ours vs maxtext outputs, relative RMS difference {err:.1e}")
  rows = [compile_row(label, fn, args) for label, fn in fns.items()]
  big = delta_inputs(memory_t, jax.random.key(0))
  rows += [{**compile_row(f"{label} T={memory_t}", fn, big, run=False), "memory_only": True}
           for label, fn in fns.items()]
  return rows


def dplr_rows(t: int, memory_t: int) -> list[dict]:
  """The op (custom VJP) and XLA autodiff of its chunk form (`_forward` over all chunks at once: the op before
  its custom VJP) on RWKV-7-like inputs: a = −κ̂, b = κ̂ ⊙ lr, k, v, per-channel log decay gk."""
  def autodiff(q, k, v, a, b, gk):
    return common.run(dplr._recurrent, lambda *x: dplr._forward(*x)[:2], q, k, v, (a, b, gk), scale=None,
                      initial_state=None, output_final_state=False, mode="chunk", chunk_size=CHUNK,
                      segment_ids=None)[0]

  def ours(q, k, v, a, b, gk):
    return la.dplr_delta_rule(q, k, v, a, b, gk, chunk_size=CHUNK)[0]

  def inputs(t):
    q, kappa, v, g, lr = delta_inputs(t, jax.random.key(1))
    return q, v[..., :DK], v, -kappa, kappa * lr[..., None], jnp.broadcast_to(g[..., None], q.shape)

  fns = {ANCHOR["dplr"]: autodiff, "dplr_delta_rule (ours, custom VJP)": ours}
  rows = [compile_row(label, fn, inputs(t)) for label, fn in fns.items()]
  return rows + [{**compile_row(f"{label} T={memory_t}", fn, inputs(memory_t), run=False), "memory_only": True}
                 for label, fn in fns.items()]


def rational_rows(tokens: int, width: int) -> list[dict]:
  ctx = LayerContext(d_model=width, d_ff=width)
  rational = registry.build("activation", "rational", ctx.with_features(width), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(rational, nnx.Param)
  x = jax.random.normal(jax.random.key(0), (tokens, width))
  step = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
  rows = [compile_row("jax.nn.gelu", jax.nn.gelu, (x,)), compile_row("rational A 5/4 (ours)", step, (params, x))]
  with mock.patch.dict(os.environ, {"ABLAX_CPU_KERNELS": "0"}):  # the op's XLA form (traced without its CPU kernel)
    return [*rows, compile_row("rational A 5/4 (ours, XLA form)", step, (params, x))]


def spline_rows(tokens: int, width: int) -> list[dict]:
  x = jax.random.uniform(jax.random.key(0), (tokens, width), jnp.float32, -1.0, 1.0)
  rows = []
  for label, module in spline_layers(width, 5, 3).items():
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    rows.append(compile_row(label, lambda p, x, graphdef=graphdef, rest=rest: nnx.merge(graphdef, p, rest)(x),
                            (params, x)))
  return rows


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="T=512 (memory T=1024), 1024 tokens")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--tables", default="delta,dplr,rational,spline",
                 help="comma-separated subset of delta, dplr, rational, spline")
  p.add_argument("--fetch-anchors", action="store_true", help="download the MaxText wheel into the anchor cache")
  p.add_argument("--out", default="runs/benchmarks/kernels.json")
  args = p.parse_args(argv)
  wanted = args.tables.split(",")
  if not set(wanted) <= {"delta", "dplr", "rational", "spline"}:
    raise SystemExit(f"--tables takes delta, dplr, rational, spline; got {args.tables}")
  if args.fetch_anchors:
    fetch_anchors()
  t, memory_t, tokens = (512, 1024, 1024) if args.quick else (4096, 16384, 8192)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"flax {flax.__version__}, python {platform.python_version()}, float32, median of {args.repeats}")
  builders = {"delta": lambda: delta_rows(t, memory_t), "dplr": lambda: dplr_rows(t, memory_t),
              "rational": lambda: rational_rows(tokens, 4096 // 8 if args.quick else 4096),
              "spline": lambda: spline_rows(tokens, 256)}
  rows = []
  print(f"{'table':<9} {'row':<44} {'ms(fwd+bwd)':>12} {'cpu ms':>9} {'vs base':>8} {'cpu vs base':>12} "
        f"{'vs anchor':>10} {'cpu vs anchor':>14} {'peak MiB':>9}")
  for table in wanted:
    entries = builders[table]()
    timed = [r for r in entries if "run" in r]
    time_rows(timed, args.repeats)
    base = timed[0]
    anchor = next((r for r in timed if r["layer"] == ANCHOR[table]), None)
    for r in entries:
      r["table"] = table
      if "ms" in r:
        r["ratio"], r["cpu_ratio"] = r["ms"] / base["ms"], r["cpu_ms"] / base["cpu_ms"]
        vs = f"{'':>10} {'':>14}"
        if anchor is not None:
          r["vs_anchor"], r["cpu_vs_anchor"] = r["ms"] / anchor["ms"], r["cpu_ms"] / anchor["cpu_ms"]
          vs = f"{r['vs_anchor']:>9.2f}x {r['cpu_vs_anchor']:>13.2f}x"
        print(f"{table:<9} {r['layer']:<44} {r['ms']:>12.2f} {r['cpu_ms']:>9.1f} {r['ratio']:>7.2f}x "
              f"{r['cpu_ratio']:>11.2f}x {vs} {r['peak_mib']:>9.1f}")
      else:
        print(f"{table:<9} {r['layer']:<44} {'(memory only)':>70} {r['peak_mib']:>9.1f}")
    rows += entries
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                             "jax": jax.__version__, "numpy": np.__version__, "rows": rows}, indent=1))
  print(f"-> {out}")


if __name__ == "__main__":
  main()
