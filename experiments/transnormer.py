"""TransNormer (Qin et al., "The Devil in Linear Transformer", EMNLP 2022): DiagAttention in the early layers,
NormAttention in the later ones, vs kernel linear attention and a softmax Transformer as causal LMs.

The paper blames two things for linear transformers' gap: the scaling (the denominator phi(q).sum phi(k),
whose gradients are unbounded) and attention dilution (weight spread over the whole sequence). TransNormer
replaces the scaling by a norm of the output (NormAttention) and confines the first half of the layers to
softmax attention within blocks (DiagAttention). Variants (`variant=`):
  transnormer  first half diag_attention (blocks of seq_len / 8: 64 at 512), second half norm_attention
  norm         norm_attention in every layer (no local attention: the dilution ablation)
  linear       linear_attention with 1 + elu and its denominator (normalize=True): the scaled baseline
  attention    softmax attention (with RoPE) in every layer
Paper scale (the released autoregressive configuration, OpenNLPLab/fairseq-evo transnormer_t2 on
WikiText-103: 6 layers, d=512, 8 heads, GLU of 8/3 d with swish, 512 tokens, 128 sequences per update,
100k updates, Adam (0.9, 0.98) lr 5e-4 with 8k warm-up, weight decay 0.01; here cosine instead of inverse
square root and no dropout, which the loop does not have; point data.* at WikiText-103 or another corpus):
  python -m train --config experiments/transnormer.py:variant=transnormer --workdir gs://bucket/transnormer
Local (2 CPU cores, byte-level LM on the embedded stdlib corpus, 4 layers of d=64, 128 bytes, 300 steps):
  python -m train --config experiments/transnormer.py:local --workdir runs/transnormer/transnormer
  python -m train.sweep --config experiments/transnormer.py:local --parallel 2   # 4 variants x seeds 0, 1
  python -m train.report runs/transnormer-local
Expect (paper): TransNormer T1 / T2 reach lower WikiText-103 perplexity than the vanilla Transformer and
than the other linear transformers it compares (1 + elu, Performer, cosFormer, ...), and NormAttention
trains stably where the scaled linear attention does not.
Measured locally (the sweep above, seeds 0 and 1; eval loss in nats per byte after 300 steps, 4 batches of
16 x 128, mean ± std over seeds; 28 min wall for the 8 runs on 2 CPU cores shared with other jobs):
  transnormer 2.765 ± 0.012   attention 2.817 ± 0.007   norm 2.975 ± 0.008   linear 3.077 ± 0.053
The paper's order holds at this scale: DiagAttention + NormAttention beats the softmax Transformer, and
NormAttention alone beats the scaled (1 + elu, denominator) linear attention but not softmax: the local
softmax layers are what closes the gap (attention dilution), the norm what beats the denominator.
"""

from experiments import common

VARIANTS = ("transnormer", "norm", "linear", "attention")
PAPER = dict(d_model=512, n_layers=6, n_heads=8, d_ff=int(8 / 3 * 512), seq_len=512, batch_size=128, steps=100_000)


def pattern(variant: str, n_layers: int) -> str:
  """The block pattern of `variant`: TransNormer puts DiagAttention in the first half of the layers."""
  if variant == "transnormer":
    local = n_layers // 2
    return f"(diag_attention, swiglu) * {local} + (norm_attention, swiglu) * {n_layers - local}"
  mixers = {"norm": "norm_attention", "linear": "linear", "attention": "attention"}
  if variant not in mixers:
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
  return common.blocks(mixers[variant], "swiglu", n_layers)


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant="transnormer", local=False)
  c = common.lm_config("small")
  c.model.update(d_model=PAPER["d_model"], n_heads=PAPER["n_heads"], d_ff=PAPER["d_ff"])
  common.text_data(c, seq_len=PAPER["seq_len"])
  c.data.batch_size = PAPER["batch_size"]
  c.optim.update(common.adamw(lr=5e-4, warmup=8000, schedule="cosine", clip=0.0, weight_decay=0.01, b2=0.98))
  c.train.steps = PAPER["steps"]
  n_layers = PAPER["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers = 4
  c.model.blocks = pattern(arg.variant, n_layers)
  c.model.options = {"diag_attention": {"block_size": c.data.seq_len // 8},
                     "linear": {"layer": "linear_attention", "feature_map": "elu+1", "normalize": True}}
  return c


def sweep(add, arg: str | None = None):
  n_layers = 4 if "local" in (arg or "") else PAPER["n_layers"]
  for variant in VARIANTS:
    for seed in (0, 1):
      add(**{"model.blocks": pattern(variant, n_layers), "seed": seed})
