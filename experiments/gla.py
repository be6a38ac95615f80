"""Gated Linear Attention (Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient
Training", ICML 2024): GLA vs RetNet vs a Transformer++ baseline as byte/token-level LMs.

Paper setup: Llama-style blocks (pre-RMSNorm, SwiGLU), GLA mixer with key dim d/2, 4 heads, low-rank
(16) logsigmoid/16 key-wise gates, SiLU output gate; 340M (d=1024, 24 layers) on 15B tokens and
1.3B (d=2048, 24 layers) on 100B tokens of SlimPajama, 2K context, 0.5M-token batches; AdamW
lr 3e-4, cosine, warmup, weight decay 0.01, grad clip 1.0.

Paper scale (TPU / GPU; bf16 compute, FSDP; C4 from TFDS under data.data_dir, or data.tfds_name=..., read
through the SentencePiece model TOK of your corpus, e.g. Llama 2's 32000 pieces as in the paper):
  python -m train --config experiments/gla.py:size=340m --workdir gs://bucket/gla-340m --config.data.spm_model=TOK
  python -m train --config experiments/gla.py:size=1.3b,mixer=attention --workdir gs://bucket/tfm-1.3b \
    --config.data.spm_model=TOK
  python -m train.sweep --config experiments/gla.py:size=1.3b --root gs://bucket/gla --emit tpu-vm \
    --config.data.spm_model=TOK                                       # the three mixers, one after another
Local (2 CPU cores, a few minutes; byte-level LM on the embedded stdlib corpus):
  python -m train --config experiments/gla.py:local --workdir runs/gla/gla
  python -m train --config experiments/gla.py:local,mixer=attention --workdir runs/gla/attention
Expect: in the paper GLA is competitive with Transformer++ in perplexity and zero-shot accuracy and
beats RetNet at both scales. Locally the three train to similar byte-level losses in 300 steps
(GLA close to attention, RetNet's fixed decay slightly behind); compare eval_loss in metrics.jsonl.
"""

from experiments import common

MIXERS = ("gla", "attention", "retnet")
SIZES = {  # d_model, layers, heads as in the paper; d_ff = SwiGLU width 8/3 d rounded up to 256
  "340m": dict(d_model=1024, n_layers=24, n_heads=4, d_ff=2816),
  "1.3b": dict(d_model=2048, n_layers=24, n_heads=4, d_ff=5632),
}
TOKENS = {"340m": 15e9, "1.3b": 100e9}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="340m", mixer="gla", local=False)
  if arg.size not in SIZES or arg.mixer not in MIXERS:
    raise ValueError(f"size must be one of {sorted(SIZES)} and mixer one of {MIXERS}")
  shape = SIZES[arg.size]
  c = common.paper_lm(TOKENS[arg.size], d_model=shape["d_model"], n_heads=shape["n_heads"], d_ff=shape["d_ff"])
  c.model.blocks = common.blocks(arg.mixer, "swiglu", shape["n_layers"])
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
  return c


def sweep(add, arg: str | None = None):
  """The three mixers at the scale ARG names (paper shapes and data, or `local`)."""
  common.sweep_variants(add, get_config, arg, [f"mixer={m}" for m in MIXERS])
