"""Mixture-of-Memories (Du et al. 2025, "MoM"): MoM vs Gated DeltaNet on MQAR recall and byte-level LM.

MoM routes each token to the top-k of M gated-delta-rule memories (4 memories, top-2 here, as in
the paper's default), so its recurrent state is M times larger at about the same compute per
routed memory; Gated DeltaNet is the single-memory baseline.

Paper scale (TPU / GPU; 340M params, 15B tokens in the paper; bf16, FSDP; LM on C4 from TFDS, or
data.tfds_name=..., with your corpus's SentencePiece model TOK; task=mqar for recall):
  python -m train --config experiments/mom.py:size=340m,mixer=mom --workdir gs://bucket/mom-340m \
    --config.data.spm_model=TOK
Local (2 CPU cores, a few minutes; MQAR unless task=text):
  python -m train --config experiments/mom.py:local,task=mqar,mixer=mom --workdir runs/mom/mqar-mom
  python -m train --config experiments/mom.py:local,task=mqar,mixer=gated_delta_net --workdir runs/mom/mqar-gdn
Expect: MoM >= Gated DeltaNet in MQAR answer accuracy at equal width (more memory capacity for
key-value pairs), and a slightly lower LM loss; paper: MoM beats GDN on recall-heavy tasks
(e.g. FDA, SWDE, SQuAD) at 340M and 1.3B. Logged: aux/mom_load_balance, layers/mom_memory_load/<layer>.
Measured locally (`python -m train.sweep --config experiments/mom.py:local --root runs/mom-local --parallel 2`:
MQAR with hybrid.py's data (vocab 256, 128 tokens, 16 pairs), 2 layers, 400 steps, seed 0, d_model 64 and 128;
2.5 min for the 4 runs on the quiet 2-core machine), eval answer accuracy / eval loss: Gated DeltaNet 0.015 /
4.83 (d 64), 0.009 / 4.83 (d 128); MoM 0.034 / 4.79 (d 64), 0.053 / 4.67 (d 128). Both are near chance
(~0.008; ln 128 = 4.85): this budget is far too small for 16 pairs in 128 tokens (the MQAR study's models
need ~1000 steps for 4 pairs in 32), so MoM's small lead (it starts to use the context's values) is no test of
the paper's claim. Not measured: a budget where Gated DeltaNet learns this task, seeds, task=text.
"""

from experiments import common
from models.lm import LM_SIZES

MIXERS = ("mom", "gated_delta_net")
TASKS = ("mqar", "text")


def _parse(arg: str | None):
  arg = common.parse_arg(arg, size="340m", task="", mixer="mom", n_memories=4, top_k=2, local=False)
  arg.task = arg.task or ("mqar" if arg.local else "text")  # the paper trains LMs; locally, recall is what separates
  return arg


def get_config(arg: str | None = None):
  arg = _parse(arg)
  if arg.mixer not in MIXERS or arg.task not in TASKS:
    raise ValueError(f"mixer must be one of {MIXERS} and task one of {TASKS}; got {arg.mixer!r}, {arg.task!r}")
  c = common.lm_config(size=arg.size)
  if arg.task == "mqar":
    common.mqar_data(c, vocab_size=256, num_pairs=16, seq_len=128)
  else:
    common.pretraining_data(c, seq_len=2048)
  c.optim.update(common.adamw(lr=3e-4, warmup=1000, schedule="cosine", clip=1.0))
  common.pod_scale(c)
  n_layers = LM_SIZES[arg.size]["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=400)
    c.optim.update(dict(lr=3e-3, weight_decay=0.0 if arg.task == "mqar" else 0.1))
    n_layers = 2
  c.model.blocks = common.blocks("mixer", "swiglu", n_layers)
  mixer = {"layer": arg.mixer}
  if arg.mixer == "mom":
    mixer.update(n_memories=arg.n_memories, top_k=arg.top_k)
  c.model.options = {"mixer": mixer}
  return c


def sweep(add, arg: str | None = None):
  """MoM vs Gated DeltaNet at the scale ARG names: the paper's shape and data, or `local` (MQAR by
  default) at widths 64 and 128."""
  grid = {"model.d_model": (64, 128)} if _parse(arg).local else None
  common.sweep_variants(add, get_config, arg, [f"mixer={m}" for m in MIXERS], grid)
