"""Small, fast configs shared by the foundation tests."""

from experiments import common


def tiny_lm(task: str = "mqar", *, steps: int = 6, batch_size: int = 8):
  c = common.lm_config("tiny")
  if task == "mqar":
    common.mqar_data(c, vocab_size=64, num_pairs=4, seq_len=24)
    c.data.train_examples = 512
    c.data.eval_examples = 64
  else:
    common.text_data(c, seq_len=32)
    c.data.max_files = 40
  c.model.update(dict(d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                      blocks="(attention, swiglu) + (swa, mlp)"))
  c.model.options.swa = dict(layer="attention", window=8)
  c.data.batch_size = batch_size
  c.optim.update(dict(lr=1e-2, warmup_steps=2, weight_decay=0.1))
  c.train.update(dict(steps=steps, log_every=1, eval_every=steps, eval_steps=2, ckpt_every=2,
                      progress=False, tensorboard=True, async_ckpt=True))
  return c
