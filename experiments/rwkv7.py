"""RWKV-7 "Goose" (Peng et al., "RWKV-7 "Goose" with Expressive Dynamic State Evolution", 2025): RWKV-7 vs a
Transformer and Gated DeltaNet at equal shape, and RWKV-7 without its value residual.

Variants (`variant=`):
  rwkv7          (rwkv7, rwkv7_channel_mix) blocks: time mixing on the DPLR state update, value residual from
                 the first layer, squared-ReLU channel mixing of width 4 d (layers/linear_attention/mixers/rwkv7.py)
  rwkv7_no_vres  the same with value_residual=False in every layer (ablation)
  transformer    (attention, swiglu)       gated_delta_net   (gated_delta_net, swiglu)
All with LayerNorm (as RWKV) and head size 64 at paper scale. The official model's extra LayerNorm on the
embeddings (ln0), its L2Wrap logit penalty, 2x learning rate on w0 and its embedding / head initialisation are
not modelled.
Paper scale (`size=`: the paper's model shapes 0.1b = 12 x 768, 0.4b = 24 x 1024, 1.5b = 24 x 2048, 2.9b =
32 x 2560): the official RWKV-LM recipe for RWKV-7 on the Pile (demo-training-run-v7-pile.sh): 4096-token
context, 240 sequences per step, 332B tokens, Adam (0.9, 0.99), eps 1e-18, weight decay 0.1, 10 warmup steps,
cosine from 8e-4 to 3e-5 (that script's lr is for 0.1b; "larger model => smaller lr": 6e-4 for 0.4b, 4e-4
above, our assumption). Point data.* at the tokenised Pile (vocab 50304):
  python -m train --config experiments/rwkv7.py:size=0.4b --workdir gs://bucket/rwkv7-0.4b
Local (2 CPU cores; byte-level stdlib text, d=64 (1 head of 64), 2 layers, 128 tokens, 300 steps, lr 1e-3):
  python -m train --config experiments/rwkv7.py:local --workdir runs/rwkv7/rwkv7
  python -m train.sweep --config experiments/rwkv7.py:local      # 4 variants x 2 seeds
  python -m train.report runs/rwkv7-local
Paper's claims: RWKV-7 matches or beats Transformers and earlier RNNs of its size on language modelling and
downstream benchmarks with constant memory per token, and its generalised delta rule tracks state (it
recognises all regular languages); the value residual and the vector-valued in-context learning rate are
among the changes it ablates.
Measured locally (the sweep above, seeds 0 and 1, eval loss in nats per byte after 300 steps, mean ± std):
RWKV-7 2.342 ± 0.049 (162K parameters), RWKV-7 without value residual 2.351 ± 0.038 (158K), Gated DeltaNet
2.425 ± 0.027 (175K), Transformer 2.685 ± 0.033 (140K): RWKV-7 ahead of both baselines at this scale; the
value residual's effect is within the seed spread of a 2-layer model (its first layer has none). Training
took 1.6 (Transformer) to 11 (RWKV-7) minutes per run on 2 shared cores under load (load average ~20).
"""

from experiments import common

VARIANTS = ("rwkv7", "rwkv7_no_vres", "transformer", "gated_delta_net")
HEAD_SIZE = 64
SIZES = {"0.1b": (12, 768), "0.4b": (24, 1024), "1.5b": (24, 2048), "2.9b": (32, 2560)}
LR = {"0.1b": 8e-4, "0.4b": 6e-4, "1.5b": 4e-4, "2.9b": 4e-4}
TOKENS, SEQ_LEN, BATCH = 332_115_325_534, 4096, 240
BLOCKS = {"rwkv7": ("rwkv7", "rwkv7_channel_mix"), "rwkv7_no_vres": ("rwkv7_no_vres", "rwkv7_channel_mix"),
          "transformer": ("attention", "swiglu"), "gated_delta_net": ("gated_delta_net", "swiglu")}


def pattern(variant: str, n_layers: int) -> str:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
  return common.blocks(*BLOCKS[variant], n_layers)


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="0.1b", variant="rwkv7", local=False)
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}")
  n_layers, d = SIZES[arg.size]
  c = common.lm_config("340m")
  c.model.update(d_model=d, n_heads=d // HEAD_SIZE, d_ff=int(d * 8 / 3), norm="layernorm", tie_embeddings=False,
                 dtype="bfloat16")
  common.text_data(c, seq_len=SEQ_LEN)
  c.data.batch_size = BATCH
  c.optim.update(common.adamw(lr=LR[arg.size], warmup=10, schedule="cosine", clip=1.0, weight_decay=0.1, b2=0.99))
  c.optim.update(eps=1e-18, min_lr_ratio=3e-5 / 8e-4)
  c.train.steps = TOKENS // (SEQ_LEN * BATCH)
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers, d = 2, c.model.d_model
    c.model.n_heads = d // HEAD_SIZE
  c.model.options = {"rwkv7_channel_mix": dict(hidden=4 * d),
                     "rwkv7_no_vres": dict(layer="rwkv7", value_residual=False)}
  c.model.blocks = pattern(arg.variant, n_layers)
  return c


def sweep(add, arg: str | None = None):
  """Every variant; two seeds at the local scale."""
  a = common.parse_arg(arg, size="0.1b", variant="rwkv7", local=False)
  n_layers, seeds = (2 if a.local else SIZES[a.size][0]), common.seeds(a.local)
  for variant in VARIANTS:
    for seed in seeds:
      add(**{"model.blocks": pattern(variant, n_layers), "seed": seed})
