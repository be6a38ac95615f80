"""Training and decoding cost of the linear-attention mixer layers vs the softmax attention mixer.

For every mixer at d_model=256, 4 heads of 64 (the layers' default expansions), float32:
  train: forward+backward of mean(y^2) w.r.t. parameters and input, B*T fixed, T in {512, 2048}
         (4096 also without --quick); median of several runs after a warm-up.
  decode: one jitted `decode` step (B sequences, one token each, cache of max_len) -> tokens/s,
         and the cache size per sequence (the recurrent state does not grow with max_len; a KV cache does).
Memory is XLA's compiled estimate (temp + argument + output); "cpu ms" is the process CPU time (the
steadier number when other jobs share the cores).

  python -m benchmarks.linear_attention_mixers [--quick] [--out runs/benchmarks/linear_attention_mixers.json]
  python -m benchmarks.linear_attention_mixers --mixers kda,kda:mode=recurrent:implementation=cpu
      # a mixer's options after its name (string values), e.g. the CPU kernel of the delta rules
"""

import argparse
import json
import pathlib
import platform

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import timing
from layers import registry
from layers.context import LayerContext

MIXERS = ("attention", "linear_attention", "retnet", "lightning_attention", "gla", "delta_net", "gated_delta_net",
          "mamba2", "norm_attention", "diag_attention", "nala", "kda", "gated_deltaproduct", "rwkv7",
          "forgetting_attention")
D_MODEL, N_HEADS = 256, 4


def _model(spec: str):
  """A mixer from "name" or "name:option=value:..." (e.g. gated_delta_net:mode=recurrent:implementation=cpu)."""
  name, *options = spec.split(":")
  kwargs = dict(o.split("=", 1) for o in options)
  ctx = LayerContext(d_model=D_MODEL, n_heads=N_HEADS)
  return registry.build("mixer", name, ctx, rngs=nnx.Rngs(0), **kwargs)


def measure_train(name: str, b: int, t: int, repeats: int) -> dict:
  graphdef, params = nnx.split(_model(name))
  x = jax.random.normal(jax.random.key(1), (b, t, D_MODEL))

  def loss(p, x):
    return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)))

  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
  mem = compiled.memory_analysis()
  sec, cpu = timing.median_seconds(compiled, (params, x), repeats)
  return {"kind": "train", "mixer": name, "T": t, "B": b, "seconds": sec, "cpu_seconds": cpu,
          "tokens_per_s": b * t / sec,
          "peak_bytes": int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)}


def measure_decode(name: str, b: int, max_len: int, repeats: int) -> dict:
  model = _model(name)
  graphdef, params = nnx.split(model)
  cache = model.init_cache(b, max_len)
  x = jax.random.normal(jax.random.key(1), (b, 1, D_MODEL))
  pos = jnp.int32(max_len // 2)
  step = jax.jit(lambda p, x, c, pos: nnx.merge(graphdef, p).decode(x, c, pos))
  sec, cpu = timing.median_seconds(step, (params, x, cache, pos), repeats)
  cache_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(cache)) // b
  return {"kind": "decode", "mixer": name, "T": max_len, "B": b, "seconds": sec, "cpu_seconds": cpu,
          "tokens_per_s": b / sec,
          "cache_bytes_per_seq": int(cache_bytes)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="T in {512, 2048}, 3 repeats")
  parser.add_argument("--tokens", type=int, default=8192, help="B*T per training step")
  parser.add_argument("--decode-batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 7; quick 3)")
  parser.add_argument("--mixers", default=",".join(MIXERS))
  parser.add_argument("--out", default="runs/benchmarks/linear_attention_mixers.json")
  args = parser.parse_args(argv)
  lengths = (512, 2048) if args.quick else (512, 2048, 4096)
  repeats = args.repeats or (3 if args.quick else 7)
  mixers = args.mixers.split(",")

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} devices)  "
        f"jax {jax.__version__}  flax {flax.__version__}  numpy {np.__version__}  "
        f"python {platform.python_version()}")
  print(f"d_model={D_MODEL}, {N_HEADS} heads, float32, layer defaults; median of {repeats} after warm-up\n")
  rows = []
  print(f"train: fwd+bwd, B*T={args.tokens}")
  print(f"{'mixer':20} {'T':>6} {'B':>4} {'ms(fwd+bwd)':>12} {'cpu ms':>9} {'tokens/s':>10} {'peak MiB':>9} "
        f"{'vs attention':>12}")
  base = {}
  for t in lengths:
    b = max(args.tokens // t, 1)
    for name in mixers:
      row = measure_train(name, b, t, repeats)
      base.setdefault(t, row["seconds"] if name == "attention" else float("nan"))
      row["vs_attention"] = row["seconds"] / base[t]
      rows.append(row)
      print(f"{name:20} {t:6d} {b:4d} {row['seconds'] * 1e3:12.1f} {row['cpu_seconds'] * 1e3:9.0f} "
            f"{row['tokens_per_s']:10.0f} {row['peak_bytes'] / 2**20:9.1f} {row['vs_attention']:11.2f}x", flush=True)

  print(f"\ndecode: one token for each of B={args.decode_batch} sequences")
  print(f"{'mixer':20} {'max_len':>7} {'ms/step':>8} {'cpu ms':>7} {'tokens/s':>10} {'cache KiB/seq':>14}")
  for max_len in (lengths[0], lengths[-1]):
    for name in mixers:
      row = measure_decode(name, args.decode_batch, max_len, repeats)
      rows.append(row)
      print(f"{name:20} {max_len:7d} {row['seconds'] * 1e3:8.2f} {row['cpu_seconds'] * 1e3:7.2f} "
            f"{row['tokens_per_s']:10.0f} {row['cache_bytes_per_seq'] / 2**10:14.1f}", flush=True)

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
          "flax": flax.__version__, "d_model": D_MODEL, "heads": N_HEADS, "tokens": args.tokens,
          "decode_batch": args.decode_batch, "repeats": repeats}
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
