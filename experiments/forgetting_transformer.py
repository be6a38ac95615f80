"""Forgetting Transformer (Lin, Nikishin, He, Courville, "Forgetting Transformer: Softmax Attention with a
Forget Gate", ICLR 2025): FoX vs the Transformer, each in the LLaMA block and in the paper's "Pro" block.

Variants (`variant=`), as the official code builds them:
  fox              forgetting_attention (forget gate, no positional embedding), SwiGLU, RMSNorm
  transformer      attention with RoPE (base 500000), SwiGLU, RMSNorm
  fox_pro          FoX + output gate, output RMSNorm, QK-norm, KV-shift; SwiGLU hidden 3.5 x d (was 4 x d) to
                   pay for the output gate's parameters
  transformer_pro  the same Pro block without the forget gate and with RoPE
Paper scale (the main setting: 760M parameters, 48B tokens of LongCrawl64 at 16k context; point data.* at a
tokenised long-document corpus): d=1536, 24 layers, FoX 24 heads of 64, Transformer 12 heads of 128; AdamW
(0.9, 0.95), weight decay 0.1, clip 1.0, 32 x 16384 tokens per step, warmup 256Mi tokens (512 steps), cosine
to 0; peak lr tuned per model by the paper: FoX 1e-3, FoX (Pro) 2e-3, Transformer 5e-4, Transformer (Pro) 1e-3
(official configs):
  python -m train --config experiments/forgetting_transformer.py:variant=fox_pro --workdir gs://bucket/fox-pro
Local (2 CPU cores; byte-level stdlib text, d=64, 2 layers, 256 tokens, 300 steps at lr 1e-3 for all):
  python -m train --config experiments/forgetting_transformer.py:local,variant=fox --workdir runs/fox/fox
  python -m train.sweep --config experiments/forgetting_transformer.py:local     # 4 variants x 2 seeds
  python -m train.report runs/forgetting_transformer-local
Paper's claim: FoX beats the Transformer in long-context language modelling (lower per-token loss late in the
16k context), length extrapolation and short-context downstream tasks, with no positional embedding, and
the Pro block improves both; FoX (Pro) is the best model.
Measured locally (the sweep above, seeds 0 and 1, eval loss in nats per byte after 300 steps, mean ± std;
~0.14M parameters each): FoX 2.433 ± 0.001, FoX (Pro) 2.410 ± 0.020, Transformer 2.651 ± 0.049,
Transformer (Pro) 2.621 ± 0.056: the paper's ordering (FoX ahead of the Transformer in both blocks, Pro
ahead of LLaMA for both), at 256 tokens of context. Training took 4.5-13 minutes per run on 2 shared cores
under load (load average ~20).
"""

from experiments import common

VARIANTS = ("fox", "transformer", "fox_pro", "transformer_pro")
PRO = dict(output_gate=True, output_norm=True, qk_norm=True, kv_shift=True)
ROPE_BASE = 500000.0
D_MODEL, N_LAYERS = 1536, 24
HEADS = {"fox": 24, "fox_pro": 24, "transformer": 12, "transformer_pro": 12}
LR = {"fox": 1e-3, "fox_pro": 2e-3, "transformer": 5e-4, "transformer_pro": 1e-3}
TOKENS = 48318382080  # "48B": the official max_tokens (45 x 2^30)
SEQ_LEN, BATCH = 16384, 32
LOCAL_LR = 1e-3
# Labels in model.options, so a variant is a block pattern (and sweeps only change model.blocks).
OPTIONS = {
  "fox_pro": dict(layer="forgetting_attention", **PRO),
  "rope_attention": dict(layer="attention", rope_theta=ROPE_BASE),
  "transformer_pro": dict(layer="forgetting_attention", forget_gate=False, rope_theta=ROPE_BASE, **PRO),
}
MIXER = {"fox": "forgetting_attention", "transformer": "rope_attention", "fox_pro": "fox_pro",
         "transformer_pro": "transformer_pro"}


def ffn_width(variant: str, d_model: int) -> int:
  """SwiGLU hidden: 4 x d x 2/3 rounded up to 256 (LLaMA), 3.5 x d for the Pro blocks (official code)."""
  ratio = 3.5 if variant.endswith("_pro") else 4.0
  return 256 * -(-int(d_model * ratio * 2 / 3) // 256)


def overrides(variant: str, local: bool) -> dict:
  """The config keys a variant sets (the sweep's grid is these dicts)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
  n_layers = 2 if local else N_LAYERS
  d_ff = 192 if local else ffn_width(variant, D_MODEL)
  return {"model.blocks": common.blocks(MIXER[variant], "swiglu", n_layers),
          "model.d_ff": int(d_ff * 3.5 / 4) if local and variant.endswith("_pro") else d_ff,
          "model.n_heads": 2 if local else HEADS[variant], "optim.lr": LOCAL_LR if local else LR[variant]}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant="fox", local=False)
  c = common.lm_config("340m")
  c.model.update(d_model=D_MODEL, norm="rmsnorm", tie_embeddings=False, dtype="bfloat16")
  common.text_data(c, seq_len=SEQ_LEN)
  c.data.batch_size = BATCH
  steps = TOKENS // (SEQ_LEN * BATCH)
  c.optim.update(common.adamw(warmup=2**28 // (SEQ_LEN * BATCH), schedule="cosine", clip=1.0, weight_decay=0.1))
  c.optim.min_lr_ratio = 0.0
  c.train.steps = steps
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    c.data.seq_len = 256
  c.model.options = OPTIONS
  for key, value in overrides(arg.variant, arg.local).items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def sweep(add, arg: str | None = None):
  """Every variant; two seeds at the local scale."""
  local = common.parse_arg(arg, variant="fox", local=False).local
  for variant in VARIANTS:
    for seed in common.seeds(local):
      add(**overrides(variant, local), seed=seed)
