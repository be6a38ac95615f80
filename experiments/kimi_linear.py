"""Kimi Linear (Kimi Team, "Kimi Linear: An Expressive, Efficient Attention Architecture", 2025): Kimi Delta
Attention (KDA) hybrids vs full attention, and KDA vs Gated DeltaNet vs Mamba-2 on synthetic recall.

Model (paper section 4): blocks of 3 KDA layers then 1 global attention layer without positional encoding
(NoPE), each followed by an MoE feed-forward (the first layer dense); KDA key / value heads of 128.
Variants (`variant=`):
  kimi_linear       3:1 KDA : NoPE attention               (the paper's model)
  kimi_linear_rope  the same with RoPE in the attention layers  ("Kimi Linear (RoPE)")
  gdn_h             3:1 Gated DeltaNet (sigmoid output gate, as the paper's GDN-H) : NoPE attention
  mla               full attention with RoPE (the paper's baseline is MLA; here multi-head attention)
  kda | gated_delta_net | mamba2   one mixer in every layer (the synthetic-task comparison, section 5.1)
Paper scale: the scaling-law models of Table 2 (`size=`: activated parameters 653m, 878m, 1.1b, 1.4b, 1.7b;
heads = layers = 16..24, width 1216..1776, 38.8B..128B tokens, 4096-token context, batch 336..640 sequences,
peak lr 2.006e-3..1.371e-3), 8 of 64 experts active. Not reproduced: MLA (multi-head attention here), the Muon
optimizer (AdamW here, cosine), the expert width (not stated; d_ff = 4 x width split over the 8 active
experts) and the 48B-A3B model of the main comparison (256 experts, 1.4T tokens).
  python -m train --config experiments/kimi_linear.py:size=653m --workdir gs://bucket/kimi-653m
  python -m train --config experiments/kimi_linear.py:size=653m,variant=mla --workdir gs://bucket/mla-653m
Local (2 CPU cores; the paper's synthetic setting scaled down: MQAR with 16 pairs in 64 tokens, vocab 64,
2 layers (hybrids: 4) of 2 heads at width 64, SwiGLU, 2000 steps at lr 1e-3):
  python -m train --config experiments/kimi_linear.py:local,variant=kda --workdir runs/kimi/kda
  python -m train.sweep --config experiments/kimi_linear.py:local      # kda, gated_delta_net, mamba2 x 2 seeds
  python -m train.report runs/kimi_linear-local
Paper's claims: on MQAR, palindrome and stack tracking KDA reaches the highest accuracy and converges faster
than GDN, while Mamba-2 fails (section 5.1); with an identical recipe Kimi Linear beats full attention (MLA)
and GDN-H, and 3:1 is the best hybrid ratio (Table 1); about 1.16x compute efficiency over MLA in the
scaling law. Local result (the sweep above, seeds 0 and 1, answer accuracy on the held-out set after 2000
steps ± its standard error; 21 min wall at --parallel 2 beside the test suite): KDA 1.000 and 1.000 (>= 0.99 at
the step-1000 eval in both seeds), Gated DeltaNet 0.897 ± 0.007 and 0.065 ± 0.005 (seed 1 never leaves chance),
Mamba-2 0.271 ± 0.010 and 0.060 ± 0.005; input-blind baseline 0.04. The paper's ordering (KDA highest and
fastest, Mamba-2 failing) agrees; two seeds. The hybrid and MLA comparison (Table 1) is not run locally.
"""

from experiments import common

VARIANTS = ("kimi_linear", "kimi_linear_rope", "gdn_h", "mla", "kda", "gated_delta_net", "mamba2")
LOCAL_MIXERS = ("kda", "gated_delta_net", "mamba2")
HEAD_DIM = 128
SIZES = {  # Table 2: heads = layers, width, tokens, peak lr, batch (sequences of 4096 tokens)
  "653m": dict(layers=16, d_model=1216, tokens=38.8e9, lr=2.006e-3, batch=336),
  "878m": dict(layers=18, d_model=1376, tokens=59.8e9, lr=1.790e-3, batch=432),
  "1.1b": dict(layers=20, d_model=1536, tokens=85.2e9, lr=1.617e-3, batch=512),
  "1.4b": dict(layers=22, d_model=1632, tokens=102.5e9, lr=1.486e-3, batch=576),
  "1.7b": dict(layers=24, d_model=1776, tokens=128.0e9, lr=1.371e-3, batch=640),
}
SEQ_LEN = 4096
OPTIONS = {
  "nope_attention": dict(layer="attention", rope_theta=None),
  "gdn_sigmoid": dict(layer="gated_delta_net", gate_activation="sigmoid"),
  "experts": dict(layer="moe", n_experts=64, top_k=8),
}
HYBRID = {"kimi_linear": ("kda", "nope_attention"), "kimi_linear_rope": ("kda", "attention"),
          "gdn_h": ("gdn_sigmoid", "nope_attention")}


def pattern(variant: str, n_layers: int, ffn: str = "experts") -> str:
  """Layer i is global attention when (i + 1) % 4 == 0 in the hybrids; layer 0's feed-forward is dense."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
  linear, full = HYBRID.get(variant, ("attention" if variant == "mla" else variant, None))
  mixers = [full if full and (i + 1) % 4 == 0 else linear for i in range(n_layers)]
  ffns = ["swiglu" if i == 0 else ffn for i in range(n_layers)]
  return " + ".join(f"({m}, {f})" for m, f in zip(mixers, ffns))


def local_blocks(variant: str) -> str:
  """Two layers of one mixer, or four layers (3:1) for a hybrid; SwiGLU feed-forwards."""
  return pattern(variant, 4 if variant in HYBRID else 2, ffn="swiglu")


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="653m", variant="kimi_linear", local=False)
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}")
  s = SIZES[arg.size]
  c = common.lm_config("340m")
  c.model.update(d_model=s["d_model"], n_heads=s["layers"], head_dim=HEAD_DIM, d_ff=4 * s["d_model"],
                 norm="rmsnorm", tie_embeddings=False, dtype="bfloat16")
  c.model.options = OPTIONS
  common.text_data(c, seq_len=SEQ_LEN)
  c.data.batch_size = s["batch"]
  c.optim.update(common.adamw(lr=s["lr"], warmup=1000, schedule="cosine", clip=1.0, weight_decay=0.1))
  c.train.steps = int(s["tokens"] // (s["batch"] * SEQ_LEN))
  c.model.blocks = pattern(arg.variant, s["layers"])
  if arg.local:
    c = common.lm_config("tiny")
    common.local_recall(c)
    c.model.update(d_model=64, n_heads=2, d_ff=128)
    c.model.options = OPTIONS
    c.train.update(dict(progress=False, tensorboard=False))
    c.model.blocks = local_blocks(arg.variant)
  return c


def sweep(add, arg: str | None = None):
  """Local: the synthetic comparison (KDA, GDN, Mamba-2) with two seeds; else the four models at `size`."""
  a = common.parse_arg(arg, size="653m", variant="kimi_linear", local=False)
  if a.local:
    for mixer in LOCAL_MIXERS:
      for seed in common.seeds(True):
        add(**{"model.blocks": local_blocks(mixer), "seed": seed})
    return
  for variant in ("kimi_linear", "kimi_linear_rope", "gdn_h", "mla"):
    add(**{"model.blocks": pattern(variant, SIZES[a.size]["layers"])})
