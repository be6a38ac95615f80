"""Mixture of experts (Switch / Mixtral / DeepSeekMoE / DeepSeek-V3 / SMEAR): dense vs MoE LMs at equal active
parameters, and DeepSeek-V3's auxiliary-loss-free balancing vs an auxiliary loss.

Variants (`variant=`): dense SwiGLU; top1 (Switch: 8 experts of width d_ff); top2 (Mixtral-style:
8 experts of width d_ff / 2, dropless); top2_capacity (same, capacity factor 1.25 with token
dropping); top2_shared (DeepSeekMoE: 1 shared + top-2 of 8 fine-grained experts, width d_ff / 3);
smear (4 experts merged per token, SMEAR); deepseek_v3 (DeepSeek-V3: fine-grained experts, top-6 of 64
(top-4 of 16 at local scale) in 8 (4) groups of which the best 4 (2) are searched, plus 1 shared expert;
sigmoid scores renormalised over the chosen, routed scaling factor 2.5; balanced by the
auxiliary-loss-free bias, rate 1e-3, and a sequence-wise loss of weight 1e-4); deepseek_v3_aux_loss
(the same model balanced by the Switch loss of weight 0.01 instead: the ablation baseline); smoe_dropout
(SMoE-Dropout: 8 SwiGLU experts of width d_ff / 8 behind a frozen random router, k from 4 to 8 over the run;
experiments/smoe_dropout.py has the paper's comparison); finedeep (Finedeep: 2 sub-layers x 4 experts of
width d_ff / 8, all active; experiments/finedeep.py); mohd (Mixture of Hidden Dimensions: a SwiGLU of width
2 d_ff reading and writing 4 of 8 hidden sub-dimensions per token; experiments/mohd.py has the paper's
compression setting). Every variant has the active parameters of the dense SwiGLU ffn of width d_ff (within
5%; SMoE-Dropout once its schedule reaches all experts).

Paper scale (TPU / GPU; bf16, FSDP, experts sharded over the mesh "expert" axis; C4 from TFDS, or
data.tfds_name=..., with your corpus's SentencePiece model TOK):
  python -m train --config experiments/moe.py:size=340m,variant=deepseek_v3 --workdir gs://bucket/moe-dsv3 \
    --config.mesh.shape.expert=8 --config.data.spm_model=TOK
Local (2 CPU cores, a few minutes per variant):
  python -m train --config experiments/moe.py:local,variant=top2 --workdir runs/moe/top2
  python -m train.sweep --config experiments/moe.py:local                  # every variant x seeds 0, 1
Balance ablation (auxiliary loss vs auxiliary-loss-free, seeds 0 and 1; the table from the finished runs):
  python -m experiments.moe --study balance --scale local
Expect: at equal active parameters the MoE variants reach a lower loss than dense (Switch: ~7x
faster to the same quality at scale; at local scale a small but visible gap), top2 >= top1,
capacity dropping costs a little quality vs dropless, SMEAR sits between dense and top2.
Auxiliary-loss-free vs auxiliary loss (Wang et al. 2024; DeepSeek-V3 Table 5): better balance (lower
MaxVio = max expert load / mean load - 1) at an equal or lower loss.
Measured locally (the balance study above; 2 layers, d 64, 16 experts of width 38, top-4 + 1 shared, 300 steps
of byte-level text, seeds 0 and 1, mean ± half-range; 14 min for the 4 runs on 2 busy CPU cores):
  balancing              eval loss       MaxVio, all steps   MaxVio, last third
  auxiliary-loss-free    2.718 ± 0.002   1.45 ± 0.04         0.49 ± 0.03
  Switch loss 0.01       2.715 ± 0.009   1.26 ± 0.09         0.66 ± 0.00
Equal loss; the bias starts at 0 and moves 1e-3 per step, so it balances worse early and better by the end.
Measured locally, the newer rows (same 2-layer d 64 models and 300 steps, seeds 0 and 1, mean ± std; each run
`python -m train --config experiments/moe.py:local,variant=V --config.seed=S`): eval loss dense SwiGLU
2.698 ± 0.002, smoe_dropout 2.735 ± 0.023, finedeep 2.722 ± 0.016 (experiments/finedeep.py:local, the same
model), mohd 2.708 ± 0.022 (125,888 active of 199,616 parameters against the dense 123,200); top1 2.727 ± 0.017,
top2 2.717 ± 0.015, top2_shared 2.708 ± 0.014 (124,224 active each), smear 2.711 ± 0.018 (~1.5 min a run at
--parallel 2 beside the test suite): none beats dense at this scale (300 steps of a 0.1M model: each expert
sees a fraction of the tokens; the MoE gain is a large-scale effect); top2 <= top1 and shared <= top2 in trend,
each within one standard deviation.
Logged per layer i: layers/moe_expert_load/i, moe_dropped_fraction/i, moe_balance_bias/i; averaged:
layers/moe_max_violation, moe_router_entropy; aux/moe_load_balance, moe_seq_balance, moe_z_loss.
"""

import argparse
import json
import os
import statistics

from experiments import common
from models.lm import LM_SIZES

N_EXPERTS = 8
DEEPSEEK_V3 = dict(n_shared=1, score="sigmoid", renormalize=True, routed_scale=2.5, bias_update_rate=1e-3,
                   seq_balance_weight=1e-4, load_balance_weight=0.0)
FINE_GRAINED = {  # experts, top-k, groups, groups searched
  "paper": dict(n_experts=64, top_k=6, n_groups=8, top_groups=4),
  "local": dict(n_experts=16, top_k=4, n_groups=4, top_groups=2),
}
AUX_LOSS = dict(bias_update_rate=0.0, seq_balance_weight=0.0, load_balance_weight=0.01)
VARIANTS = {
  "dense": ("swiglu", {}),
  "top1": ("moe", dict(top_k=1, expert_hidden=-1)),  # -1: the dense width d_ff
  "top2": ("moe", dict(top_k=2)),
  "top2_capacity": ("moe", dict(top_k=2, dispatch="capacity", capacity_factor=1.25)),
  "top2_shared": ("moe", dict(top_k=2, n_shared=1)),
  "smear": ("smear", dict(n_experts=4)),
  "deepseek_v3": ("moe", DEEPSEEK_V3),
  "deepseek_v3_aux_loss": ("moe", {**DEEPSEEK_V3, **AUX_LOSS}),
  "smoe_dropout": ("smoe_dropout", dict(n_experts=8, top_k_start=4, expert_ffn="swiglu")),  # ramp: the run
  "finedeep": ("finedeep", dict(n_sublayers=2, n_experts=4)),
  "mohd": ("mohd", dict(n_subdims=8, active_fraction=0.5)),  # ffn width 2 d_ff, half of it active per token
}
STUDIES = {"variants": tuple(VARIANTS), "balance": ("deepseek_v3", "deepseek_v3_aux_loss")}


def ffn_options(variant: str, d_ff: int, local: bool = False, steps: int = 0) -> dict:
  """Registry options for the ffn of `variant` (label "ffn" in the block pattern) in a run of `steps` steps."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown MoE variant {variant!r}; known: {sorted(VARIANTS)}")
  layer, opts = VARIANTS[variant]
  opts = dict(opts)
  if opts.get("expert_hidden") == -1:
    opts["expert_hidden"] = d_ff
  if layer == "smoe_dropout":
    opts["ramp_steps"] = steps
  if layer == "mohd":
    opts["hidden"] = 2 * d_ff
  if variant.startswith("deepseek_v3"):
    opts.update(FINE_GRAINED["local" if local else "paper"])
  elif layer == "moe":
    opts.setdefault("n_experts", N_EXPERTS)
  return {"layer": layer, **opts}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="340m", variant="top2", local=False, study="variants")
  c = common.lm_config(size=arg.size)
  common.pretraining_data(c, seq_len=1024)
  c.optim.update(common.adamw(lr=3e-4, warmup=2000, schedule="cosine", clip=1.0))
  common.pod_scale(c)
  n_layers = LM_SIZES[arg.size]["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=300)
    n_layers = 2
  c.model.blocks = common.blocks("attention", "ffn", n_layers)
  c.model.options = {"ffn": ffn_options(arg.variant, c.model.d_ff, arg.local, c.train.steps)}
  return c


def sweep(add, arg: str | None = None):
  """study=variants (default): every variant; study=balance: the balancing ablation; each x seeds (two locally)."""
  parsed = common.parse_arg(arg, size="340m", variant="top2", local=False, study="variants")
  if parsed.study not in STUDIES:
    raise ValueError(f"unknown study {parsed.study!r}; known: {sorted(STUDIES)}")
  c = get_config(arg)
  for variant in STUDIES[parsed.study]:
    for seed in common.seeds(parsed.local):
      add(**{"model.options.ffn": ffn_options(variant, c.model.d_ff, parsed.local, c.train.steps), "seed": seed})


def run_summary(records: list[dict]) -> dict:
  """Final eval loss and balance (MaxVio averaged over layers, then over the logged steps: all / last third)."""
  last = records[-1]["step"]
  vio = [(r["step"], r["layers/moe_max_violation"]) for r in records if "layers/moe_max_violation" in r]
  late = [v for s, v in vio if s > 2 * last / 3]
  return {"eval_loss": [r["eval_loss"] for r in records if "eval_loss" in r][-1],
          "max_violation": statistics.mean(v for _, v in vio) if vio else None,
          "max_violation_late": statistics.mean(late) if late else None}


def table(rows: list[dict]) -> str:
  """Markdown: per variant, mean and half-range over seeds of each measure."""
  keys = ("eval_loss", "max_violation", "max_violation_late")

  def cell(values):
    values = [v for v in values if v is not None]
    if not values:
      return "-"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"

  lines = ["variant | seeds | " + " | ".join(keys), "---|---|" + "---|" * len(keys)]
  for variant in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == variant]
    lines.append(f"{variant} | {len(mine)} | " + " | ".join(cell([r[k] for r in mine]) for k in keys))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Run a study's grid (train.sweep), then write its table.")
  parser.add_argument("--study", choices=sorted(STUDIES), default="balance")
  parser.add_argument("--scale", choices=("local", "paper"), default="local")
  parser.add_argument("--root", default=None, help="sweep root (default runs/moe-study_<study>[_local])")
  parser.add_argument("--parallel", type=int, default=1)
  args = parser.parse_args(argv)
  from train import metrics
  from train import sweep as sweep_lib

  spec = f"experiments/moe.py:study={args.study}" + (",local" if args.scale == "local" else "")
  root = args.root or sweep_lib.default_root(spec)
  if sweep_lib.main(["--config", spec, "--root", root, "--parallel", str(args.parallel)]):
    raise SystemExit(f"some runs failed; see {root}/*/log.txt")
  c = get_config(spec.partition(":")[2])
  names = {json.dumps(ffn_options(v, c.model.d_ff, args.scale == "local", c.train.steps), sort_keys=True): v
           for v in VARIANTS}
  rows = []
  for run in sweep_lib.expand(spec, root):
    variant = names[json.dumps(run.overrides["model.options.ffn"], sort_keys=True)]
    rows.append({"variant": variant, "seed": run.overrides["seed"], **run_summary(metrics.read(run.workdir))})
  with open(os.path.join(root, f"moe_{args.study}.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(root, f"moe_{args.study}.md"), "w") as f:
    f.write(table(rows) + "\n")
  print("\n" + table(rows) + f"\n\nwrote {root}/moe_{args.study}.{{json,md}}")


if __name__ == "__main__":
  main()
