"""A tiny experiment for the sweep tests: MQAR, 2 layers, a few steps."""

from experiments import common


def _parse(arg):
  return common.parse_arg(arg, steps=4, runs=4)


def get_config(arg=None):
  arg = _parse(arg)
  c = common.lm_config("tiny")
  common.mqar_data(c, vocab_size=64, num_pairs=4, seq_len=24)
  c.data.update(dict(train_examples=256, eval_examples=32, batch_size=8))
  c.model.update(dict(d_model=32, n_heads=2, d_ff=64))
  c.train.update(dict(steps=arg.steps, log_every=1, eval_every=arg.steps, eval_steps=1, ckpt_every=2,
                      progress=False, tensorboard=False))
  return c


def sweep(add, arg=None):
  """The first `runs` of 2 ffns x 2 seeds."""
  grid = [{"model.blocks": f"(attention, {ffn}) * 2", "seed": seed} for ffn in ("swiglu", "mlp") for seed in (0, 1)]
  for overrides in grid[:_parse(arg).runs]:
    add(**overrides)
