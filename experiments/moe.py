"""Mixture of experts (Switch / Mixtral / DeepSeekMoE / SMEAR): dense vs MoE LMs at equal active parameters.

Variants (`variant=`): dense SwiGLU; top1 (Switch: 8 experts of width d_ff); top2 (Mixtral-style:
8 experts of width d_ff / 2, dropless); top2_capacity (same, capacity factor 1.25 with token
dropping); top2_shared (DeepSeekMoE: 1 shared + top-2 of 8 fine-grained experts, width d_ff / 3);
smear (4 experts merged per token, SMEAR). Every variant has the active parameters of the dense
SwiGLU ffn of width d_ff; the MoE ones have ~4x (8x for top1) its total ffn parameters.

Paper scale (TPU / GPU; bf16, FSDP, experts sharded over the mesh "expert" axis; C4 from TFDS, or
data.tfds_name=..., with your corpus's SentencePiece model TOK):
  python -m train --config experiments/moe.py:size=340m,variant=top2 --workdir gs://bucket/moe-top2 \
    --config.mesh.shape.expert=8 --config.data.spm_model=TOK
Local (2 CPU cores, a few minutes per variant):
  python -m train --config experiments/moe.py:local,variant=top2 --workdir runs/moe/top2
Expect: at equal active parameters the MoE variants reach a lower loss than dense (Switch: ~7x
faster to the same quality at scale; at local scale a small but visible gap), top2 >= top1,
capacity dropping costs a little quality vs dropless, SMEAR sits between dense and top2.
Logged: moe_load_balance / moe_z_loss (aux losses), moe_expert_load, moe_dropped_fraction,
moe_router_entropy.
"""

from experiments import common

N_EXPERTS = 8
VARIANTS = {
  "dense": ("swiglu", {}),
  "top1": ("moe", dict(top_k=1, expert_hidden=-1)),  # -1: the dense width d_ff
  "top2": ("moe", dict(top_k=2)),
  "top2_capacity": ("moe", dict(top_k=2, dispatch="capacity", capacity_factor=1.25)),
  "top2_shared": ("moe", dict(top_k=2, n_shared=1)),
  "smear": ("smear", dict(n_experts=4)),
}


def ffn_options(variant: str, d_ff: int) -> dict:
  """Registry options for the ffn of `variant` (label "ffn" in the block pattern)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown MoE variant {variant!r}; known: {sorted(VARIANTS)}")
  layer, opts = VARIANTS[variant]
  opts = dict(opts)
  if opts.get("expert_hidden") == -1:
    opts["expert_hidden"] = d_ff
  if layer == "moe":
    opts.setdefault("n_experts", N_EXPERTS)
  return {"layer": layer, **opts}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="340m", variant="top2", local=False)
  c = common.lm_config(size=arg.size)
  common.pretraining_data(c, seq_len=1024)
  c.optim.update(common.adamw(lr=3e-4, warmup=2000, schedule="cosine", clip=1.0))
  common.pod_scale(c)
  n_layers = common.LM_SIZES[arg.size]["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers = 2
  c.model.blocks = common.blocks("attention", "ffn", n_layers)
  c.model.options = {"ffn": ffn_options(arg.variant, c.model.d_ff)}
  return c


def sweep(add, arg: str | None = None):
  """Every variant at the scale ARG names (paper shapes and data, or `local`)."""
  common.sweep_variants(add, get_config, arg, [f"variant={v}" for v in VARIANTS])
