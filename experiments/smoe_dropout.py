"""SMoE-Dropout (Chen et al., "Sparse MoE as the New Dropout: Scaling Dense and Self-Slimmable Transformers",
ICLR 2023): a dense ReLU feed-forward vs the same parameters as SMoE-Dropout (experts of 1/16 of its width,
a frozen random router, k rising from 8 to all 16 experts over the run) vs a learned-router SMoE trained at
k = 2; every model evaluated at k = 1, 2, 4, 8, 16 experts (train.eval_top_k).

Paper scale (the authors' Transformer-XL on enwik8 as an LM of this codebase: 4 layers, d_model 256, 8 heads,
dense d_inner 8192 = 16 experts of 512, byte-level, 512-token windows, Adam lr 2.5e-4 without warmup, 400k
steps, gradient clipping 0.25; batch 24 for 22 so it shards; point data.corpus at enwik8 for the paper's data):
  python -m train --config experiments/smoe_dropout.py:variant=smoe_dropout --workdir gs://bucket/smoe-dropout
Local (2 CPU cores, a few minutes a run; 2 layers, d_model 64, dense d_ff 192 = 8 experts of 24, k 4 -> 8):
  python -m train --config experiments/smoe_dropout.py:local,variant=smoe_dropout --workdir runs/smoe/sd
  python -m train.sweep --config experiments/smoe_dropout.py:local      # 3 variants x seeds 0, 1
  python -m train.report runs/smoe_dropout-local                        # tables: final losses; eval loss vs k
Paper's claims: at full capacity SMoE-Dropout beats the dense model of equal parameters (Transformer-XL on
enwik8: lower bpc), and it is self-slimmable: eval quality improves smoothly and monotonically with k, while a
learned router overfits the k it was trained with (its quality does not improve when given more experts).
Measured locally (the sweep above: 2 layers, d_model 64, dense ReLU d_ff 192, 300 steps of byte-level text,
seeds 0 and 1, final eval loss mean ± std from `python -m train.report runs/smoe_dropout-local`; 1.5-7 min a
run on 2 busy CPU cores):
  variant (k trained)         k=1            k=2            k=4            k=8 (= all)
  dense ReLU MLP              -              -              -              2.677 ± 0.008
  SMoE-Dropout (4 -> 8)       2.753 ± 0.015  2.729 ± 0.016  2.719 ± 0.017  2.718 ± 0.022
  learned router (2)          2.748 ± 0.021  2.725 ± 0.010  2.730 ± 0.009  2.743 ± 0.012
Self-slimming reproduces: SMoE-Dropout's loss falls monotonically with k, while the learned router is best at
the k it was trained with and worse with more experts. The full-capacity gain over dense does not: after 300
steps the dense model is 0.04 nats better (it trains all of its width every step; SMoE-Dropout averages 6.0
of 8 experts: 3.8e11 training FLOPs against the dense 4.2e11).
"""

from experiments import common

VARIANTS = ("dense", "smoe_dropout", "learned")
SEEDS = (0, 1)
SHAPES = {  # n_experts, first k, the k evaluated
  "paper": dict(n_experts=16, top_k_start=8, eval_top_k=(1, 2, 4, 8, 16)),
  "local": dict(n_experts=8, top_k_start=4, eval_top_k=(1, 2, 4, 8)),
}
LEARNED_TOP_K = 2  # the authors' --moe-top-k default for learned-router SMoEs


def ffn_options(variant: str, d_ff: int, steps: int, local: bool) -> dict:
  """Registry options of the ffn labelled "ffn": all three have the parameters of a ReLU MLP of width d_ff."""
  shape = SHAPES["local" if local else "paper"]
  n = shape["n_experts"]
  if variant == "dense":
    return {"layer": "mlp", "hidden": d_ff, "activation": "relu", "use_bias": True}
  if variant == "smoe_dropout":
    return {"layer": "smoe_dropout", "n_experts": n, "top_k_start": shape["top_k_start"], "ramp_steps": steps}
  if variant == "learned":
    return {"layer": "moe", "n_experts": n, "top_k": LEARNED_TOP_K, "expert_ffn": "mlp", "expert_hidden": d_ff // n,
            "expert_options": {"activation": "relu", "use_bias": True}, "renormalize": True}
  raise ValueError(f"unknown SMoE-Dropout variant {variant!r}; known: {VARIANTS}")


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant="smoe_dropout", local=False)
  c = common.lm_config("small")
  common.text_data(c, seq_len=512)
  c.model.update(dict(d_model=256, n_heads=8, head_dim=64, d_ff=8192))
  c.optim.update(common.adamw(lr=2.5e-4, warmup=0, schedule="cosine", clip=0.25, weight_decay=0.0))
  c.data.batch_size = 24
  c.train.steps = 400_000
  n_layers = 4
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers = 2
  c.model.blocks = common.blocks("attention", "ffn", n_layers)
  c.model.options = {"ffn": ffn_options(arg.variant, c.model.d_ff, c.train.steps, arg.local)}
  if arg.variant != "dense":  # the dense ffn has no experts to count
    c.train.eval_top_k = SHAPES["local" if arg.local else "paper"]["eval_top_k"]
  return c


def sweep(add, arg: str | None = None) -> None:
  """Every variant over SEEDS, at the scale `arg` names (`:local` or paper); the dense one at its only k."""
  c = get_config(arg)
  local = common.parse_arg(arg, variant="smoe_dropout", local=False).local
  for variant in VARIANTS:
    for seed in SEEDS:
      dense = {"train.eval_top_k": ()} if variant == "dense" else {}
      add(**{"model.options.ffn": ffn_options(variant, c.model.d_ff, c.train.steps, local), **dense, "seed": seed})
