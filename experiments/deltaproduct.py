"""DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil, Grazzi, "DeltaProduct: Improving State-Tracking in
Linear RNNs via Householder Products", NeurIPS 2025): Gated DeltaProduct with n_h = 1, 2, 3 delta steps per
token, with and without negative eigenvalues.

Variants (`variant=`): dp1 (n_h = 1: Gated DeltaNet with beta in [0, 2]), dp2, dp3, and dp2_pos (n_h = 2 with
beta in [0, 1], no negative eigenvalues). Every layer: gated_deltaproduct + SwiGLU.
Paper scale: the paper trains its language models with the reference library's training code; its shapes and
token counts are not restated here. This file uses the Gated DeltaNet recipe of experiments/gated_delta_net.py
(size=340m: d=1024, 21 layers, 6 heads of 256, 15B tokens; size=1.3b: d=2048, 100B tokens; AdamW 3e-4,
cosine, clip 1.0): check the paper's appendix before a paper run (the loop logs the parameter count; n_h
widens the key / value / beta projections, so dp2 and dp3 have more parameters than dp1).
  python -m train --config experiments/deltaproduct.py:size=1.3b,variant=dp2 --workdir gs://bucket/dp2-1.3b
Local (2 CPU cores; byte-level stdlib text, d=64, 2 layers, 128 tokens, 300 steps at lr 1e-3):
  python -m train --config experiments/deltaproduct.py:local,variant=dp2 --workdir runs/deltaproduct/dp2
  python -m train.sweep --config experiments/deltaproduct.py:local      # 4 variants x 2 seeds
  python -m train.report runs/deltaproduct-local
Paper's claims: more Householder steps per token (n_h) with eigenvalues in [-1, 1] track state (permutation
group word problems) that DeltaNet cannot, and improve language modelling and length extrapolation over
DeltaNet (n_h = 1); negative eigenvalues are needed for state tracking.
Measured locally (the sweep above, seeds 0 and 1, eval loss in nats per byte after 300 steps, mean ± std from
`python -m train.report`; eval standard error 0.018; the whole sweep 18 min wall at --parallel 2 beside the test
suite):
  dp1 2.581 ± 0.012 (159K parameters)   dp2 2.599 ± 0.063 (185K)   dp3 2.572 ± 0.012 (211K)
  dp2_pos 2.575 ± 0.041 (185K)
Equal within the seed spread at this scale, negative eigenvalues or not (the paper's language-modelling gain is
from 1.3B-parameter runs; its state-tracking tasks are not run here).
"""

from experiments import common
from experiments import gated_delta_net as gdn

VARIANTS = {"dp1": dict(num_householder=1), "dp2": dict(num_householder=2), "dp3": dict(num_householder=3),
            "dp2_pos": dict(num_householder=2, allow_neg_eigval=False)}
OPTIONS = {name: dict(layer="gated_deltaproduct", **opts) for name, opts in VARIANTS.items()}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="340m", variant="dp2", local=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg.variant!r}; known: {sorted(VARIANTS)}")
  c = gdn.get_config(f"size={arg.size}" + (",local" if arg.local else ""))
  n_layers = 2 if arg.local else gdn.SIZES[arg.size]["n_layers"]
  c.model.options = OPTIONS
  c.model.blocks = common.blocks(arg.variant, "swiglu", n_layers)
  return c


def sweep(add, arg: str | None = None):
  """Every variant; two seeds at the local scale."""
  a = common.parse_arg(arg, size="340m", variant="dp2", local=False)
  n_layers, seeds = (2 if a.local else gdn.SIZES[a.size]["n_layers"]), common.seeds(a.local)
  for variant in VARIANTS:
    for seed in seeds:
      add(**{"model.blocks": common.blocks(variant, "swiglu", n_layers), "seed": seed})
