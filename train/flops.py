"""Analytic training FLOPs and the peak FLOP/s that MFU divides by.

Training FLOPs = 3 x forward (backward costs two forwards). Forward per token:
2 x (parameters used in matmuls) + token-mixing work of each mixer that has it
(causal softmax attention: 2 * 2 * n_heads * head_dim * T_eff with T_eff = (T + 1) / 2, or the
window). Embedding lookups are free; a tied embedding is counted once, as the output matmul.
"""

import time

import jax
import jax.numpy as jnp
from flax import nnx

# Dense bf16 peak FLOP/s per device by `device_kind` (vendor datasheets).
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
}


def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an fp32 n x n matmul on this host's CPU (the best of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops(devices=None) -> tuple[float, str]:
  """(peak FLOP/s of all `devices` together, how it was obtained)."""
  devices = devices or jax.devices()
  kind = devices[0].device_kind
  if devices[0].platform == "cpu":
    return measured_cpu_peak(), "measured fp32 matmul on the host CPU"
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak * len(devices), f"table: {name} x {len(devices)}"
  return float("nan"), f"unknown device kind {kind!r}; add it to train.flops.PEAK_FLOPS"


def matmul_params(params: nnx.State, *, lookup_tables: tuple[tuple, ...] = ()) -> int:
  """Parameters used as matmul weights (>= 2-D), except pure lookup tables (paths given)."""
  return sum(int(var.size) for path, var in nnx.to_flat_state(params)
             if len(var.shape) >= 2 and tuple(path) not in lookup_tables)


def mixing_flops_per_token(model_cfg, seq_len: int) -> float:
  """Forward token-mixing FLOPs per token of the softmax-attention layers of an LM."""
  from models.block_pattern import parse
  from models.lm import resolve

  per_token = 0.0
  n_heads = model_cfg.n_heads
  head_dim = model_cfg.head_dim or model_cfg.d_model // n_heads
  for mixer, _ in parse(model_cfg.blocks):
    layer, opts = resolve(mixer, model_cfg.get("options"))
    if layer == "attention":
      window = opts.get("window")
      t_eff = (seq_len + 1) / 2 if not window else min(window, (seq_len + 1) / 2)
      per_token += 2 * 2 * n_heads * head_dim * t_eff  # QK^T and AV
  return per_token


def train_flops_per_step(model_cfg, params: nnx.State, *, tokens_per_example: int, batch_size: int,
                         seq_len: int = 0) -> float:
  """3 x forward FLOPs for one optimizer step of `batch_size` examples."""
  lm = model_cfg.kind == "lm"
  lookups = (("embed", "embedding"),) if lm and not model_cfg.tie_embeddings else ()
  forward = 2.0 * matmul_params(params, lookup_tables=lookups) * tokens_per_example
  if lm:
    forward += mixing_flops_per_token(model_cfg, seq_len) * tokens_per_example
  return 3.0 * forward * batch_size
