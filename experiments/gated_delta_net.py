"""Gated DeltaNet (Yang et al., "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025):
Gated DeltaNet vs Mamba-2 vs DeltaNet vs GLA vs Transformer++, and the paper's hybrids.

Gated DeltaNet layer: S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T with the Mamba-2 gate
a_t = exp(-exp(A_log) softplus(W_a x + dt_bias)) (A_log, dt_bias without weight decay), L2-normalised
q/k, short convs, value dim 2 x head_dim, SiLU-gated output RMSNorm. 340M: d=1024, 21 layers, 6 heads
of 256 (fewer layers than the 24-layer baselines, for equal parameters). 1.3B here: d=2048, 21 layers,
6 heads of 256 -- an assumption scaled from the 340M shape; check the paper's table before a paper
run (the loop logs the parameter count). Recipe: AdamW lr 3e-4, cosine, warmup, grad clip 1.0.

Variants (`variant=`): gated_delta_net | delta_net | mamba2 | gla | attention |
h1 (Gated DeltaNet + sliding-window attention, alternating) | h2 (Mamba-2, Gated DeltaNet, SWA repeated;
its Mamba-2 layers share the Gated DeltaNet head shape).
Paper scale (TPU / GPU; bf16, FSDP; C4 from TFDS, or data.tfds_name=..., with your corpus's SentencePiece model TOK):
  python -m train --config experiments/gated_delta_net.py:size=1.3b --workdir gs://bucket/gdn-1.3b \
    --config.data.spm_model=TOK
  python -m train.sweep --config experiments/gated_delta_net.py:size=1.3b --root gs://bucket/gdn --emit tpu-vm \
    --config.data.spm_model=TOK                                       # every variant
Local (2 CPU cores, a few minutes):
  python -m train --config experiments/gated_delta_net.py:local --workdir runs/gdn/gdn
  python -m train --config experiments/gated_delta_net.py:local,variant=mamba2 --workdir runs/gdn/mamba2
  python -m train.sweep --config experiments/gated_delta_net.py:local --parallel 2    # every variant x seeds 0, 1
Expect: in the paper Gated DeltaNet beats Mamba-2 and DeltaNet in perplexity, zero-shot reasoning and
recall at 1.3B/100B tokens, and the hybrids (H1, H2) improve further.
Measured locally (the sweep above: 2 layers (H2: 3), d = 64, 300 steps of byte-level text, seeds 0 and 1, eval
loss in nats per byte, SE 0.018, mean ± std; 8 min wall for the 14 runs at --parallel 2 on the quiet machine):
  H2 (Mamba-2 + GDN + SWA, 3 layers, 221k params)  2.470 ± 0.007
  Mamba-2 (177k)                                    2.489 ± 0.007
  H1 (GDN + SWA, 141k)                              2.585 ± 0.061
  Gated DeltaNet (159k)                             2.594 ± 0.024
  GLA (126k)                                        2.676 ± 0.051
  attention (123k)                                  2.696 ± 0.002
  DeltaNet (125k)                                   2.796 ± 0.059
Gated DeltaNet over DeltaNet, GLA and attention: **agrees** (0.2 nats over DeltaNet: the gate matters this early);
over Mamba-2: **disagrees** (Mamba-2 0.1 nats lower, ~4 standard deviations, with 11% more parameters at this
width); H1 **within noise** of Gated DeltaNet; H2 lowest but with a third layer. On recall (mqar_study.py,
mom.py, kimi_linear.py) Gated DeltaNet solves MQAR where GLA and Mamba-2 do not.
"""

from experiments import common

VARIANTS = ("gated_delta_net", "delta_net", "mamba2", "gla", "attention", "h1", "h2")
SIZES = {  # d_model, layers, heads, head_dim (0: d_model / heads), SwiGLU width
  "340m": dict(d_model=1024, n_layers=21, n_heads=6, head_dim=256, d_ff=2816),
  "1.3b": dict(d_model=2048, n_layers=21, n_heads=6, head_dim=256, d_ff=5632),
}
BASELINE_LAYERS = {"340m": 24, "1.3b": 24}  # the non-GDN variants use the usual 24-layer stacks
TOKENS = {"340m": 15e9, "1.3b": 100e9}


def pattern(variant: str, n_layers: int) -> str:
  if variant in ("gated_delta_net", "delta_net", "mamba2", "gla", "attention"):
    return common.blocks(variant, "swiglu", n_layers)
  if variant == "h1":
    return f"((gated_delta_net, swiglu) + (swa, swiglu)) * {n_layers // 2}"
  if variant == "h2":
    return f"((mamba2, swiglu) + (gated_delta_net, swiglu) + (swa, swiglu)) * {n_layers // 3}"
  raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")


def _parse(arg: str | None):
  return common.parse_arg(arg, size="340m", variant="gated_delta_net", window=2048, local=False)


def get_config(arg: str | None = None):
  arg = _parse(arg)
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}")
  shape = SIZES[arg.size]
  gdn_heads = arg.variant in ("gated_delta_net", "h1", "h2")
  c = common.paper_lm(TOKENS[arg.size], d_model=shape["d_model"], d_ff=shape["d_ff"],
                      n_heads=shape["n_heads"] if gdn_heads else 16 if arg.size == "1.3b" else 8,
                      head_dim=shape["head_dim"] if gdn_heads else 0)
  n_layers = shape["n_layers"] if arg.variant == "gated_delta_net" else BASELINE_LAYERS[arg.size]
  window = arg.window
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers, window = (3 if arg.variant == "h2" else 2), 32
  c.model.blocks = pattern(arg.variant, n_layers)
  c.model.options = {"swa": {"layer": "attention", "window": window}}
  return c


def sweep(add, arg: str | None = None):
  """Every variant x seeds at the scale ARG names (paper shapes and data, or `local`)."""
  common.sweep_variants(add, get_config, arg, [f"variant={v}" for v in VARIANTS], _parse(arg).local)
