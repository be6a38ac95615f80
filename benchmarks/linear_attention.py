"""Forward+backward wall time and peak memory of the linear-attention ops vs causal softmax attention.

Every op in chunk and recurrent mode (gated_delta_product with n=2 Householder steps per token), causal
softmax attention (layers.attention.softmax_attention, i.e. jax.nn.dot_product_attention on CPU / GPU)
and forgetting attention (layers.attention.forgetting_attention: "blockwise", the flash-style form, and
"quadratic", the reference), for T in 512..16384 at a fixed number of tokens B*T, H=4 heads, K=V=64,
float32, on the default device. Gates and betas in the ranges the layers produce. Mode "packed" runs the
chunk form (softmax: the causal attention; forgetting: blockwise) with segment_ids (documents of random
lengths, mean 512 tokens, passed as a runtime argument so XLA cannot fold the masks); its "vs unpacked"
column is the ratio to the same op without segment_ids in the same run (the cost of exact document
resets). Time is the median of several runs after a warm-up (wall clock; "cpu ms" is the process CPU
time, summed over threads, which is the steadier number on a shared host); memory is XLA's compiled
estimate (temp + argument + output).

Mode "pallas" (gla, gated_delta_rule) runs the chunk form with implementation="pallas" (the Pallas kernels:
Triton on GPU, Mosaic on TPU); its "vs unpacked" column is the ratio to the XLA chunk form in the same run.
It needs a GPU or TPU (on CPU the kernels run in Pallas interpret mode, which is not a speed number); no device
timing of it exists yet. Measure it with
  python -m benchmarks.linear_attention --ops gla,gated_delta_rule --modes chunk,pallas

The "matmul floor" row times, at each T, only the twelve batched [64 x 64] @ [64 x 64] products that
chunk-mode linear_attn's forward (4) and backward (8) cannot avoid (chunk 64, outputs written): no
chunked form can beat it on this device, so recurrent / floor bounds the chunk-vs-recurrent speedup.

  python -m benchmarks.linear_attention [--quick] [--out runs/benchmarks/linear_attention.json]
"""

import argparse
import json
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from layers import linear_attention as la
from layers.attention import forgetting_attention, softmax_attention

H, DK, DV = 4, 64, 64
MEAN_DOCUMENT = 512
OPS = ("linear_attn", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "kda", "gated_delta_product",
       "dplr_delta_rule")
HOUSEHOLDER = 2  # gated_delta_product's steps per token
PALLAS_OPS = ("gla", "gated_delta_rule")  # ops with Pallas kernels (mode "pallas")
# ops that are not linear-attention ops, and their modes ("packed" added when asked for)
ATTENTION_MODES = {"softmax": ("causal",), "forgetting": ("blockwise", "quadratic")}


def _inputs(op: str, b: int, t: int, key: jax.Array) -> tuple[jax.Array, ...]:
  """Random q, k, v (+ gates / beta) in the ranges the mixer layers produce."""
  kq, kk, kv, kg, kb = jax.random.split(key, 5)
  steps = t * HOUSEHOLDER if op == "gated_delta_product" else t  # k, v, beta per Householder step

  def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  q = jax.random.normal(kq, (b, t, H, DK))
  k = jax.random.normal(kk, (b, steps, H, DK))
  v = jax.random.normal(kv, (b, steps, H, DV))
  if "delta" in op or op == "kda":
    q, k = unit(q), unit(k)
  g = jax.nn.log_sigmoid(jax.random.normal(kg, (b, t, H)) + 3.0)
  gk = jax.nn.log_sigmoid(jax.random.normal(kg, (b, t, H, DK))) / 16
  beta = jax.nn.sigmoid(jax.random.normal(kb, (b, steps, H)))
  kappa = unit(jax.random.normal(kb, (b, t, H, DK)))  # RWKV-7: a = -kappa, b = kappa * lr
  lr = jax.nn.sigmoid(jax.random.normal(kq, (b, t, H, 1)))
  w = -0.6065 * jax.nn.sigmoid(jax.random.normal(kg, (b, t, H, DK)))  # RWKV-7 log decay -e^-0.5 sigmoid(.)
  extra = {"linear_attn": (), "simple_gla": (g,), "gla": (gk,), "delta_rule": (beta,),
           "gated_delta_rule": (g, beta), "kda": (gk, beta), "gated_delta_product": (g, 2 * beta),
           "dplr_delta_rule": (-kappa, kappa * lr, w),
           "softmax": (), "forgetting": (g,)}[op]
  return (q, k, v, *extra)


def _segment_ids(b: int, t: int) -> jax.Array:
  """[B, T] document ids: lengths drawn from an exponential distribution with mean MEAN_DOCUMENT."""
  lengths = np.maximum(1, np.random.default_rng(0).exponential(MEAN_DOCUMENT, (b, t)).astype(int))
  starts = np.cumsum(lengths, axis=1)  # [B, t]: where documents 1, 2, ... start (more than enough of them)
  return jnp.asarray([np.searchsorted(row, np.arange(t), side="right") for row in starts], jnp.int32)


def _loss_fn(op: str, mode: str) -> Callable[..., jax.Array]:
  """sum(o) of `op` in `mode`; for mode "packed" the last argument is segment_ids; "pallas" is the chunk form
  through the Pallas kernels."""
  packed = mode == "packed"

  def loss(*args):
    args, options = (args[:-1], {"segment_ids": args[-1]}) if packed else (args, {})
    if op == "softmax":
      return jnp.sum(softmax_attention(*args, **options))
    if op == "forgetting":
      return jnp.sum(forgetting_attention(*args, mode="blockwise" if packed else mode, **options))
    if op == "gated_delta_product":
      options["num_householder"] = HOUSEHOLDER
    if mode == "pallas":
      options["implementation"] = "pallas"
    o, _ = getattr(la, op)(*args, mode="chunk" if mode in ("packed", "pallas") else mode, **options)
    return jnp.sum(o)

  return loss


def _floor_fn(b: int, t: int) -> tuple[Callable[..., tuple[jax.Array, ...]], tuple[jax.Array, ...]]:
  """The twelve batched chunk-size-64 matmuls of chunk linear_attn fwd+bwd, and random operands."""
  shape = (b, H, t // 64, 64, 64)  # [B, H, N, C, K]
  xs = tuple(jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(1), 12))
  return lambda *xs: tuple(jnp.einsum("bhnij,bhnjk->bhnik", xs[i], xs[(i + 1) % 12]) for i in range(12)), xs


def measure(op: str, mode: str, b: int, t: int, repeats: int, max_bytes: float) -> dict:
  """Median fwd+bwd seconds and compiled memory of grad(sum(o)) w.r.t. every input.

  A program whose compiled estimate exceeds max_bytes is not run (seconds = NaN): on a shared CPU
  host the T x T softmax scores at T = 16384 would take most of the memory.
  """
  if op == "floor":
    fn, args = _floor_fn(b, t)
    step = jax.jit(fn)
  else:
    inputs = _inputs(op, b, t, jax.random.key(0))
    step = jax.jit(jax.value_and_grad(_loss_fn(op, mode), argnums=tuple(range(len(inputs)))))
    args = (*inputs, _segment_ids(b, t)) if mode == "packed" else inputs
  compiled = step.lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  row = {"op": op, "mode": mode, "T": t, "B": b, "peak_bytes": int(peak)}
  if peak > max_bytes:
    nan = float("nan")
    return {**row, "seconds": nan, "cpu_seconds": nan, "tokens_per_s": nan, "skipped": "memory"}
  jax.block_until_ready(compiled(*args))
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  sec = statistics.median(times)
  return {**row, "seconds": sec, "cpu_seconds": statistics.median(cpu_times), "tokens_per_s": b * t / sec}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="T in {512, 4096}, 4096 tokens, 2 repeats")
  parser.add_argument("--lengths", default=None, help="comma-separated T values (default 512..16384)")
  parser.add_argument("--tokens", type=int, default=None, help="B*T per step (default 16384; quick 4096)")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5)")
  parser.add_argument("--ops", default=",".join((*OPS, *ATTENTION_MODES, "floor")),
                      help="ops to time; 'forgetting' is forgetting attention, 'floor' the matmul floor row")
  parser.add_argument("--modes", default="chunk,packed,recurrent",
                      help="chunk, recurrent, parallel, packed (chunk with segment_ids), pallas (chunk through the "
                           "Pallas kernels: gla and gated_delta_rule on GPU / TPU)")
  parser.add_argument("--max-gib", type=float, default=6.0, help="skip programs needing more memory")
  parser.add_argument("--out", default="runs/benchmarks/linear_attention.json")
  args = parser.parse_args(argv)
  if "pallas" in args.modes.split(",") and jax.default_backend() not in ("gpu", "tpu"):
    parser.error("mode 'pallas' times the Pallas kernels, which need a GPU or TPU (on CPU they run in interpret "
                 "mode, not a speed number): drop it from --modes or run on a device")
  lengths = (512, 4096) if args.quick else (512, 1024, 2048, 4096, 8192, 16384)
  if args.lengths:
    lengths = tuple(int(t) for t in args.lengths.split(","))
  tokens = args.tokens or (4096 if args.quick else 16384)
  repeats = args.repeats or (2 if args.quick else 5)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} devices)  "
        f"jax {jax.__version__}  flax {flax.__version__}  numpy {np.__version__}  "
        f"python {platform.python_version()}")
  print(f"fwd+bwd of sum(o) w.r.t. all inputs; B*T={tokens}, H={H}, K=V={DK}, float32, "
        f"median of {repeats} after warm-up\n")
  print(f"{'op':20} {'mode':10} {'T':>6} {'B':>4} {'ms(fwd+bwd)':>12} {'cpu ms':>9} {'tokens/s':>11} {'peak MiB':>9} "
        f"{'vs softmax':>10} {'vs unpacked':>11}")
  rows = []
  softmax_sec, unpacked_sec = {}, {}
  modes = args.modes.split(",")
  for t in lengths:
    b = max(tokens // t, 1)
    for op in sorted(args.ops.split(","), key=lambda name: name != "softmax"):  # softmax first
      op_modes = {name: (*m, "packed") if "packed" in modes else m for name, m in ATTENTION_MODES.items()}
      for mode in {**op_modes, "floor": ("12 dots",)}.get(op, modes):
        if mode == "pallas" and op not in PALLAS_OPS:
          continue
        row = measure(op, mode, b, t, repeats, args.max_gib * 2**30)
        if mode in ("chunk", "causal", "blockwise"):
          unpacked_sec[op, t] = row["seconds"]
        if op == "softmax" and mode == "causal":
          softmax_sec[t] = row["seconds"]
        row["vs_softmax"] = row["seconds"] / softmax_sec[t] if t in softmax_sec else float("nan")
        row["vs_unpacked"] = row["seconds"] / unpacked_sec.get((op, t), float("nan")) \
          if mode in ("packed", "pallas") else float("nan")
        rows.append(row)
        unpacked = f"{row['vs_unpacked']:10.2f}x" if mode in ("packed", "pallas") else ""
        print(f"{op:20} {mode:10} {t:6d} {b:4d} {row['seconds'] * 1e3:12.1f} {row['cpu_seconds'] * 1e3:9.0f} "
              f"{row['tokens_per_s']:11.0f} {row['peak_bytes'] / 2**20:9.1f} {row['vs_softmax']:9.2f}x {unpacked}",
              flush=True)

  print("\nNaN time: not run, compiled memory estimate above --max-gib.")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
          "flax": flax.__version__, "tokens": tokens, "heads": H, "dk": DK, "dv": DV, "repeats": repeats}
  clean = [{key: (None if isinstance(val, float) and val != val else val) for key, val in row.items()}
           for row in rows]  # NaN -> null: valid JSON
  out.write_text(json.dumps({"meta": meta, "rows": clean}, indent=1))
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
