"""Scaling laws of a layer type (Hoffmann et al., 2022, "Training Compute-Optimal Large Language Models"):
softmax attention vs Gated DeltaNet (Yang et al., ICLR 2025) in an isoFLOP study, each with SwiGLU.

Per FLOP budget, 7 model sizes (5 locally) with the steps that spend the budget by the model's analytic FLOPs
(train/isoflop.py), each run's cosine schedule ending at its last step (an honest final point). The report
fits Chinchilla's approaches 2 (isoFLOP parabolas -> N*(C), D*(C)) and 3 (L(N, D) = E + A/N^a + B/D^b), each
variant's frontier L(C) with a bootstrap band, and Gated DeltaNet's compute multiplier over attention.
Paper scale (TPU / GPU; bf16, FSDP; C4 from TFDS or data.tfds_name=..., with your SentencePiece model TOK):
  python -m train.sweep --config experiments/scaling.py --dry-run --config.data.spm_model=TOK   # the plan
  python -m train.sweep --config experiments/scaling.py --root gs://bucket/scaling --emit tpu-vm \
    --config.data.spm_model=TOK
  python -m train.report gs://bucket/scaling --baseline attention --target-flops 1e20
Local (2 CPU cores; 40 runs of 50-1900 steps, widths 16-80 at 2 layers, byte-level text):
  python -m train.sweep --config experiments/scaling.py:local --parallel 2
  python -m train.report runs/scaling-local --baseline attention --target-flops 1e13
Expect: the paper reports Gated DeltaNet ahead of Transformer++ at 1.3B / 100B tokens, which this study turns
into a compute multiplier with an interval. Measured locally (the two commands above, seed 0, 45 min wall beside
the test suite): frontier exponents attention 0.154 [0.148, 0.521], Gated DeltaNet 0.421 [0.238, 0.772];
Gated DeltaNet's compute multiplier over attention at 1e13 FLOPs 0.58 [0.23, 2.6] (95% bootstrap): not decided
at this scale, attention's frontier lower up to 1e12 FLOPs (best eval loss 2.115 vs 2.205 there). Approach 3 gives
the allocation exponent a = 0.53 [0.30, 0.69] (attention), 0.48 [0.30, 0.71] (Gated DeltaNet); the report
declines Gated DeltaNet's isoFLOP fit (3 of 4 budgets' minima lie at or below the smallest width: add smaller
widths or larger budgets to bracket them).
"""

from experiments import common
from train import config as config_lib
from train import isoflop

VARIANTS = ("attention", "gated_delta_net")
# (d_model, n_layers, n_heads, d_ff): widths at fixed depth locally; depth and width together at paper scale
# (head_dim 64 or 128, SwiGLU width ~8/3 d rounded to 128).
FAMILY = {
  "local": [(d, 2, 2, 3 * d) for d in (16, 24, 32, 40, 48, 64, 80, 96, 128)],
  "paper": [(128, 2, 2, 384), (192, 3, 3, 512), (256, 4, 4, 768), (384, 6, 6, 1024), (512, 8, 8, 1408),
            (640, 10, 10, 1792), (768, 12, 12, 2048),
            (896, 14, 14, 2432), (1024, 16, 16, 2816), (1280, 18, 10, 3456), (1536, 20, 12, 4096),
            (1792, 22, 14, 4864), (2048, 24, 16, 5504)],
}
BUDGETS = {"local": (1e11, 2e11, 5e11, 1e12), "paper": (1e18, 2e18, 5e18, 1e19, 3e19)}
SIZES_PER_BUDGET = {"local": 5, "paper": 7}


def shapes(scale: str, variant: str) -> list[dict]:
  """The model-shape family as sweep overrides, smallest first."""
  return [{"model.d_model": d, "model.n_heads": h, "model.d_ff": f, "model.blocks": common.blocks(variant, "swiglu", n)}
          for d, n, h, f in FAMILY[scale]]


def get_config(arg: str | None = None):
  """One run of the study: `variant=...`, `local`; the middle shape of the family (the sweep sets the others)."""
  arg = common.parse_arg(arg, variant="attention", local=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg.variant!r}; known: {VARIANTS}")
  c = common.lm_config("125m")
  common.pretraining_data(c, seq_len=2048)
  c.data.batch_size = 256  # 0.5M tokens per step
  c.optim.update(common.adamw(lr=3e-4, warmup=500, schedule="cosine", clip=1.0, weight_decay=0.1))
  c.optim.min_lr_ratio = 0.1
  c.train.steps = 10000
  common.pod_scale(c)
  scale = "local" if arg.local else "paper"
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    c.optim.warmup_steps = 20
    c.train.update(eval_steps=16, eval_every=100000, ckpt_every=100000, log_every=50)  # final eval only
  for key, value in shapes(scale, arg.variant)[len(FAMILY[scale]) // 2].items():
    config_lib.set_value(c, key, value)
  return c


def sweep(add, arg: str | None = None):
  """Every variant at every budget of the scale ARG names (paper, or `local`)."""
  scale = "local" if "local" in (arg or "") else "paper"
  for variant in VARIANTS:
    config = get_config(",".join(filter(None, (arg, f"variant={variant}"))))
    isoflop.add_runs(add, config, BUDGETS[scale], shapes(scale, variant), sizes=SIZES_PER_BUDGET[scale])
