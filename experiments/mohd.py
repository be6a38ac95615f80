"""Mixture of Hidden Dimensions (Chen et al., "Mixture of Hidden-Dimensions Transformer", ICML 2025), the
feed-forward half (layers/moe/mohd.py) in its compression setting: dense SwiGLU LMs vs the same models whose
ffns read and write only half of the hidden sub-dimensions per token (16 sub-dimensions, 8 active: 6 shared
+ 2 routed), vs dense SwiGLU of half the ffn width (the same active ffn parameters as MoHD).

Paper scale (LLaMA-style 355M / 495M / 1.13B; the project's 340m shape is the nearest; MoHD also sparsifies
attention, which is not implemented here, so only the ffns are compressed):
  python -m train --config experiments/mohd.py:size=340m,variant=mohd --workdir gs://bucket/mohd-340m
  python -m train.sweep --config experiments/mohd.py:size=340m --emit slurm
Local (2 CPU cores, a few minutes a run; 2 layers, d_model 64 = 16 sub-dimensions of 4, d_ff 192):
  python -m train --config experiments/mohd.py:local,variant=mohd --workdir runs/mohd/mohd
  python -m train.sweep --config experiments/mohd.py:local              # 3 variants x seeds 0, 1
  python -m train.report runs/mohd-local
Paper's claim (compression): with 50% fewer activated parameters MoHD keeps ~99% of the dense model's
performance (10 NLP tasks) and beats dense and MoE models of the same activated parameters.
Measured locally (the sweep above: 2 layers, d_model 64, d_ff 192, 300 steps of byte-level text, seeds 0 and
1, final eval loss mean ± std from `python -m train.report runs/mohd-local`; 1.5-5 min a run on 2 busy CPU
cores; active parameters as logged, params_active):
  dense SwiGLU d_ff        2.698 ± 0.002   123,200 active
  MoHD 8 of 16 active      2.728 ± 0.002    90,176 active (127,040 total)
  dense SwiGLU d_ff / 2    2.718 ± 0.029    86,336 active
At this scale MoHD at half the active ffn loses 0.03 nats to the full dense model and does not beat the dense
ffn half as wide (within its seed spread): the paper's compression claim (99% of the performance) is not
confirmed here, with the caveats that only the ffns are sparsified and 300 steps of a 0.1M model.
"""

from experiments import common

VARIANTS = ("dense", "mohd", "dense_half")
SEEDS = (0, 1)


def ffn_options(variant: str, d_ff: int) -> dict:
  """Registry options of the ffn labelled "ffn"."""
  if variant == "dense":
    return {"layer": "swiglu"}
  if variant == "mohd":
    return {"layer": "mohd", "n_subdims": 16, "active_fraction": 0.5}
  if variant == "dense_half":
    return {"layer": "swiglu", "hidden": d_ff // 2}
  raise ValueError(f"unknown MoHD variant {variant!r}; known: {VARIANTS}")


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="340m", variant="mohd", local=False)
  c = common.ffn_lm(arg.size, arg.local)
  c.model.options = {"ffn": ffn_options(arg.variant, c.model.d_ff)}
  return c


def sweep(add, arg: str | None = None) -> None:
  """Every variant over SEEDS at the scale `arg` names."""
  d_ff = get_config(arg).model.d_ff
  for variant in VARIANTS:
    for seed in SEEDS:
      add(**{"model.options.ffn": ffn_options(variant, d_ff), "seed": seed})
