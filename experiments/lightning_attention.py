"""Lightning Attention-2 / TransNormerLLM (Qin et al. 2024, "Lightning Attention-2: A Free Lunch for Handling
Unlimited Sequence Lengths in Large Language Models"; "TransNormerLLM"): the decayed, gated NormAttention
of TransNormerLLM vs RetNet, decay-free NormAttention and a softmax Transformer as causal LMs.

The layer (layers/linear_attention/mixers/lightning_attention.py) is linear attention with a fixed decay
per head and layer, lambda = exp(-2^(-8(h+1)/H) (1 - l/(L-1) + 1e-5)), SiLU on q and k, SimpleRMSNorm of
the readout times a linear gate u; Lightning Attention-2 is its tiled (intra-block / inter-block)
computation, which is our simple_gla chunk form. Variants (`variant=`):
  lightning  lightning_attention in every layer (TransNormerLLM's mixer)
  retnet     retnet (fixed decay 1 - 2^(-5-h) in every layer, rotary q/k, per-head norm, SiLU gate)
  norm       norm_attention (TransNormer's NormAttention: no decay, no gate)
  attention  softmax attention with RoPE
Paper scale (a 385M-class shape from our size table, d=1024, 24 layers, 8 heads (ALiBi's slopes want a
power of two), SwiGLU 2816, 2K tokens, 0.5M-token batches, AdamW lr 3e-4 cosine; the released
TransNormerLLM-385M configuration was not at hand to copy; point data.* at a tokenised corpus):
  python -m train --config experiments/lightning_attention.py:variant=lightning --workdir gs://bucket/tnl-385m
Local (2 CPU cores, byte-level LM on the embedded stdlib corpus, 4 layers of d=64 with 4 heads, 128
bytes, 300 steps):
  python -m train --config experiments/lightning_attention.py:local --workdir runs/lightning/lightning
  python -m train.sweep --config experiments/lightning_attention.py:local --parallel 2   # 4 variants x 2 seeds
  python -m train.report runs/lightning_attention-local
Speed (the claim of Lightning Attention-2 is constant tokens/s in the sequence length, in training and
decoding): python -m benchmarks.linear_attention_mixers --mixers attention,retnet,lightning_attention
Expect (papers): Lightning Attention-2 keeps its training speed as the sequence grows while FlashAttention-2
slows; TransNormerLLM at 385M-7B is competitive with Transformer LLMs of the same size; the decay is what
lifts it above TransNormer's decay-free NormAttention.
Measured locally (the sweep above, seeds 0 and 1; eval loss in nats per byte after 300 steps, 4 batches of
16 x 128, mean ± std over seeds; 30 min wall for the 8 runs on 2 CPU cores shared with other jobs):
  retnet 2.696 ± 0.048 (296K parameters)   lightning 2.704 ± 0.053 (246K)   attention 2.783 ± 0.089 (230K)
  norm 2.870 ± 0.033 (230K)
The decay is worth 0.17 nats/byte over decay-free NormAttention here; TransNormerLLM's mixer and RetNet
(which has twice the value width) are within the seed spread of each other, both ahead of attention at
this short training. Speed: see benchmarks/RESULTS.md (mixer layers).
"""

from experiments import common

VARIANTS = {"lightning": "lightning_attention", "retnet": "retnet", "norm": "norm_attention",
            "attention": "attention"}
SIZE = dict(d_model=1024, n_layers=24, n_heads=8, d_ff=2816)
TOKENS = 15e9


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant="lightning", local=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {arg.variant!r}")
  c = common.lm_config("340m")
  c.model.update(d_model=SIZE["d_model"], n_heads=SIZE["n_heads"], d_ff=SIZE["d_ff"])
  common.text_data(c, seq_len=2048)
  c.data.batch_size = 256  # 0.5M tokens per step
  c.optim.update(common.adamw(lr=3e-4, warmup=1000, schedule="cosine", clip=1.0, weight_decay=0.1))
  c.train.steps = int(TOKENS // (c.data.batch_size * c.data.seq_len))
  n_layers = SIZE["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    c.model.n_heads = 4  # 4 decay rates per layer, as the paper's heads span fast to slow
    n_layers = 4
  c.model.blocks = common.blocks(VARIANTS[arg.variant], "swiglu", n_layers)
  return c


def sweep(add, arg: str | None = None):
  n_layers = 4 if "local" in (arg or "") else SIZE["n_layers"]
  for mixer in VARIANTS.values():
    for seed in (0, 1):
      add(**{"model.blocks": common.blocks(mixer, "swiglu", n_layers), "seed": seed})
