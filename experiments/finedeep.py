"""Finedeep (Pan et al., "Finedeep: Mitigating Sparse Activation in Dense LLMs via Multi-Layer Fine-Grained
Experts", 2025): dense SwiGLU LMs vs the same models with every ffn split into M sub-layers x K fine-grained
experts (layers/moe/finedeep.py), at the dense model's parameters and FLOPs, for several M x K of one total.

Paper scale (the paper trains dense LLaMA-style models of several sizes on 100B tokens; its exact shapes and
M x K table were not reachable here, so this uses the project's 1.3B shape, d_ff 5632 = 32 experts of 176):
  python -m train --config experiments/finedeep.py:size=1.3b,variant=m4k8 --workdir gs://bucket/finedeep-m4k8
  python -m train.sweep --config experiments/finedeep.py:size=1.3b --emit slurm          # the M x K ablation
Local (2 CPU cores, a few minutes a run; 2 layers, d_model 64, d_ff 192 = 8 experts of 24):
  python -m train --config experiments/finedeep.py:local,variant=m2k4 --workdir runs/finedeep/m2k4
  python -m train.sweep --config experiments/finedeep.py:local          # dense, 2 x 4, 4 x 2; seeds 0, 1
  python -m train.report runs/finedeep-local
Paper's claims: at comparable parameters and FLOPs Finedeep beats the dense model in perplexity and on
benchmarks, and does best when depth (M) and width (K) are balanced; it also activates more of the ffn's
hidden units (a lower share of near-zero activations).
Measured locally (the sweep above: 2 layers, d_model 64, d_ff 192, 300 steps of byte-level text, seeds 0 and
1, final eval loss mean ± std from `python -m train.report runs/finedeep-local`; 1.5-5 min a run on 2 busy
CPU cores):
  dense SwiGLU      2.698 ± 0.002     123,200 parameters
  Finedeep 2 x 4    2.722 ± 0.016     124,352 (+0.9%: router vectors and one norm)
  Finedeep 4 x 2    2.729 ± 0.013     124,608 (+1.1%)
At this scale Finedeep is 0.02-0.03 nats worse than dense (about 2 seed standard deviations), the deeper
split slightly more so: the paper's gain, measured on 100B-token runs, does not show in 300 CPU steps.
"""

from experiments import common

SEEDS = (0, 1)
SPLITS = {  # variant -> (sub-layers M, experts per sub-layer K)
  "paper": {"m2k16": (2, 16), "m4k8": (4, 8), "m8k4": (8, 4)},
  "local": {"m2k4": (2, 4), "m4k2": (4, 2)},
}


def ffn_options(variant: str, local: bool) -> dict:
  """Registry options of the ffn labelled "ffn": dense SwiGLU, or Finedeep with the variant's M x K."""
  if variant == "dense":
    return {"layer": "swiglu"}
  splits = SPLITS["local" if local else "paper"]
  if variant not in splits:
    raise ValueError(f"unknown Finedeep variant {variant!r} at this scale; known: {['dense', *splits]}")
  m, k = splits[variant]
  return {"layer": "finedeep", "n_sublayers": m, "n_experts": k}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="1.3b", variant="", local=False)
  arg.variant = arg.variant or ("m2k4" if arg.local else "m4k8")
  c = common.ffn_lm(arg.size, arg.local)
  c.model.options = {"ffn": ffn_options(arg.variant, arg.local)}
  return c


def sweep(add, arg: str | None = None) -> None:
  """Dense and every M x K of the scale `arg` names, over SEEDS."""
  local = common.parse_arg(arg, size="1.3b", variant="", local=False).local
  for variant in ["dense", *SPLITS["local" if local else "paper"]]:
    for seed in SEEDS:
      add(**{"model.options.ffn": ffn_options(variant, local), "seed": seed})
