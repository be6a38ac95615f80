"""PolyCom (Zhuo et al., "Polynomial Composition Activations"): SwiGLU vs PolyReLU vs PolyNorm LMs.

PolyReLU(x) = w0 relu(x)³ + w1 relu(x)² + w2 relu(x) + b and PolyNorm(x) = w0 N(x³) + w1 N(x²) + w2 N(x) + b
(N: RMS normalisation over the hidden features), w = 1/3, b = 0 at init, 4 scalars per layer in the
"activation" optimizer group. They sit in a non-gated FFN 3/2 as wide as the SwiGLU FFN they
replace, so every variant has the same parameter count (2·d·(3/2·d_ff) = 3·d·d_ff).

Paper scale (1B dense = LM size "1.3b": d_model 2048, 24 layers, SwiGLU d_ff 5632 -> PolyCom hidden 8448; TPU / GPU;
bf16, FSDP; C4 from TFDS, or data.tfds_name=..., with your corpus's SentencePiece model TOK):
  python -m train --config experiments/polycom.py:size=1.3b,variant=polynorm --workdir gs://bucket/polynorm-1b \
    --config.data.spm_model=TOK
Local (2 CPU cores, a few minutes a run, byte-level text):
  python -m train --config experiments/polycom.py:local,variant=polynorm --workdir runs/polycom/polynorm
  python -m train.sweep --config experiments/polycom.py:local --parallel 2
  python -m experiments.polycom --root runs/polycom-local          # table + loss curves
Expect: paper (1B dense, 250B tokens) PolyNorm vs SwiGLU train loss 2.17 vs 2.19, val PPL 3.17 vs 3.22,
+1.21% average on 6 downstream tasks, PolyReLU in between.
Measured locally (`python -m train.sweep --config experiments/polycom.py:local --parallel 2`: 2 layers,
d_model 64, 300 steps, byte-level text, seeds 0-1, eval loss on 32K held-out bytes (its standard error
0.018), mean ± std over seeds; 3 min for the 6 runs on the quiet 2-core machine): SwiGLU 2.698 ± .002,
PolyReLU 2.715 ± .014, PolyNorm 2.736 ± .017. The paper's order is reversed at this scale: PolyNorm sits
0.038 above SwiGLU, about two seed stds and two eval standard errors; PolyReLU in between. 300 steps of a
0.1M-parameter model say little about 250B tokens at 1B (the cubic branch, normalised, may need longer to
pay off); not a reproduction, not yet a refutation.
MoE variant (paper: OLMoE-style 1B active / 7B total, 64 experts, top-8; local: 8 experts, top-2),
every expert the variant's ffn at 1/top_k of its width, so active parameters match the dense run:
  python -m train --config experiments/polycom.py:size=1.3b,variant=polynorm,moe --workdir gs://bucket/polynorm-moe \
    --config.data.spm_model=TOK
  python -m train --config experiments/polycom.py:local,variant=polynorm,moe --workdir runs/polycom/polynorm-moe
Expect (paper): PolyNorm experts ~0.02 lower validation loss than SwiGLU experts on all 11 sets.
"""

import argparse

from experiments import common
from models.lm import LM_SIZES

VARIANTS = ("swiglu", "polyrelu", "polynorm")


def ffn_options(variant: str, d_ff: int) -> dict:
  """Registry options of the ffn labelled "ffn" in the block pattern; equal parameters for every variant."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown PolyCom variant {variant!r}; known: {VARIANTS}")
  if variant == "swiglu":
    return {"layer": "swiglu", "hidden": d_ff}
  return {"layer": "mlp", "hidden": 3 * d_ff // 2, "activation": variant}


def moe_ffn_options(variant: str, d_ff: int, n_experts: int, top_k: int) -> dict:
  """The MoE form of `variant`: top_k of n_experts experts, each the variant's ffn at 1/top_k width."""
  expert = ffn_options(variant, d_ff)
  layer, hidden = expert.pop("layer"), expert.pop("hidden")
  return {"layer": "moe", "n_experts": n_experts, "top_k": top_k, "expert_ffn": layer,
          "expert_hidden": hidden // top_k, "expert_options": expert}


def _arg(arg: str | None):
  return common.parse_arg(arg, size="1.3b", variant="polynorm", local=False, moe=False)


def get_config(arg: str | None = None):
  arg = _arg(arg)
  c = common.lm_config(size=arg.size)
  common.pretraining_data(c, seq_len=2048)
  c.optim.update(common.adamw(lr=3e-4, warmup=2000, schedule="cosine", clip=1.0, weight_decay=0.1))
  common.pod_scale(c)
  n_layers = LM_SIZES[arg.size]["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers = 2
  c.model.blocks = common.blocks("attention", "ffn", n_layers)
  c.model.options = {"ffn": ffn_options(arg.variant, c.model.d_ff)}
  if arg.moe:
    n_experts, top_k = (8, 2) if arg.local else (64, 8)
    c.model.options = {"ffn": moe_ffn_options(arg.variant, c.model.d_ff, n_experts, top_k)}
  return c


def sweep(add, arg: str | None = None) -> None:
  """The three variants x seeds at the scale ARG names (paper shapes and data, or `local`): two seeds
  locally (a claim needs its spread), one 1B run per variant at paper scale."""
  common.sweep_variants(add, get_config, arg, [f"variant={v}" for v in VARIANTS], _arg(arg).local)


def main() -> None:
  from train import report

  parser = argparse.ArgumentParser(description="PolyCom comparison report: table and loss curves.")
  parser.add_argument("--root", default="runs/polycom-local", help="the sweep root (python -m train.sweep --root)")
  args = parser.parse_args()
  try:
    result = report.report(args.root)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  print(result["markdown"])
  print(f"-> {result['csv']}, {', '.join(result['plots'])}")


if __name__ == "__main__":
  main()
