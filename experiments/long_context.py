"""Long-context hybrids with sequence parallelism (LASP-2: Sun et al. 2025, "LASP-2: Rethinking Sequence
Parallelism for Linear Attention and Its Hybrid"): a 1.3B Gated DeltaNet + softmax attention hybrid (3:1)
trained at 128K tokens of context, each sequence split over the mesh axis "sequence".

What it shows: a context no device holds alone. Linear layers exchange one fixed-size summary per layer and
shard (layers/linear_attention/sequence_parallel.py: 32 shards x 16 heads x 128 x (128 + 256) fp32 = 96 MiB
gathered per sequence and Gated DeltaNet layer whatever T is), attention layers exchange K/V (all-gather,
LASP-2H, or a ring: `attention=ring`). Nothing else changes: the loss is the unsplit model's.

Mesh at paper scale: 64 accelerators (8 nodes of 8 H100, or 64 TPU v5p chips) as sequence=32 x fsdp=2:
4096 tokens per shard, so one attention block step holds [16 heads, 4096, 4096] fp32 scores (1 GiB);
parameters, gradients and AdamW state sharded over all 64 devices (rule embed -> (fsdp, sequence));
4 sequences of 131072 tokens (512K tokens) per step, blocks rematerialised, bf16 compute.
  python -m train --config experiments/long_context.py --workdir gs://bucket/lc-1.3b-128k
  python -m train --config experiments/long_context.py:seq_len=262144,shards=64 --workdir gs://bucket/lc-256k
Data: long documents (PG-19 books from TFDS `pg19` prepared as ArrayRecord under data.data_dir; set
data.spm_model to a 32000-piece SentencePiece model). Short-document corpora packed with document masking
would never use the context.
Local (8 fake CPU devices on 2 cores, ~3 min each; a 4-layer hybrid at d=64, T=256, batch 8, 200 steps on the
byte-level standard-library corpus, data=2 x sequence=4, then the same run as 8-way data parallelism):
  JAX_NUM_CPU_DEVICES=8 python -m train --config experiments/long_context.py:local --workdir runs/lc/seq4
  JAX_NUM_CPU_DEVICES=8 python -m train --config experiments/long_context.py:local,shards=1 --workdir runs/lc/seq1
  JAX_NUM_CPU_DEVICES=8 python -m train.sweep --config experiments/long_context.py:local   # shards x attention
Expect: splitting the sequence changes nothing but rounding. Measured (seed 0, one run each, under load):
train loss equal at step 10 (5.46989), 5e-7 apart at step 20, 1e-5 at step 100, at most 3.4e-4 over the
20 logged steps (Adam amplifying fp32 rounding); final eval loss 2.73800 (sequence=4) vs 2.73799 (data
parallel). At paper scale, what the mesh is sized for is the per-device memory, which falls with the
number of shards (python -m benchmarks.sequence_parallel; benchmarks/RESULTS.md).
"""

from experiments import common
from experiments.hybrid import SIZES, pattern

METHODS = ("all_gather", "ring")


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="1.3b", mixer="gated_delta_net", ratio=3, seq_len=131072, shards=32,
                         attention="all_gather", local=False)
  if arg.size not in SIZES or arg.attention not in METHODS:
    raise ValueError(f"size must be one of {sorted(SIZES)} and attention one of {METHODS}")
  shape = SIZES[arg.size]
  c = common.lm_config("tiny")
  c.model.update(d_model=shape["d_model"], n_heads=shape["n_heads"], d_ff=shape["d_ff"], vocab_size=32000,
                 dtype="bfloat16", param_dtype="float32", remat="full")
  c.data.update(dict(name="tfds_text", tfds_name="pg19", text_field="book_text", spm_model="",
                     seq_len=arg.seq_len, batch_size=4))
  c.optim.update(common.adamw(lr=3e-4, warmup=200, schedule="cosine", clip=1.0, weight_decay=0.01))
  c.train.update(dict(steps=5000, eval_every=500, eval_steps=4, ckpt_every=250))
  c.mesh.shape.update(dict(data=1, fsdp=-1, tensor=1, expert=1, sequence=arg.shards))
  # ZeRO-3 over every device: the sequence shards hold the same parameters, so they share them out too.
  c.mesh.rules = {**c.mesh.rules.to_dict(), "embed": ("fsdp", "sequence")}
  n_layers = shape["n_layers"]
  if arg.local:
    c = common.shrink_for_cpu(c, steps=200)
    common.text_data(c, seq_len=256)
    c.model.update(vocab_size=256, remat="none")
    c.data.batch_size = 8
    c.mesh.shape.update(dict(data=-1, fsdp=1, sequence=min(arg.shards, 4)))
    n_layers = 4
  c.model.blocks = pattern(arg.mixer, arg.ratio, n_layers)
  c.model.options = dict(attention=dict(sequence_parallel=arg.attention))
  return c


def sweep(add):
  for shards, method in ((1, "all_gather"), (2, "all_gather"), (4, "all_gather"), (4, "ring")):
    add(**{"mesh.shape.sequence": shards, "model.options.attention.sequence_parallel": method})
