"""µP (models/parametrization.py): a coordinate check (activation scale flat in width under µP, growing under
SP), µP == SP at the base width, the per-parameter kinds and init rescaling, and config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from models import lm
from models import parametrization as mup
from tests.foundation_configs import tiny_lm
from train import config as config_lib
from train import optim
from train.config import ConfigError
from train.validate import validate

BASE, WIDTHS, STEPS, VOCAB = 32, (32, 64, 128, 256), 4, 32


def _model_cfg(width: int, parametrization: str, blocks: str = "(attention, swiglu) * 1", **kw):
  m = lm.lm_model_config()
  m.update(dict(vocab_size=VOCAB, d_model=width, n_heads=2, d_ff=2 * width, blocks=blocks, tie_embeddings=False,
                parametrization=parametrization, base_width=BASE, **kw))
  return m


@functools.cache
def _trained_rms(width: int, parametrization: str) -> np.ndarray:
  """RMS of the embedding output, the block output and the logits after STEPS Adam steps (lr 1e-2, constant,
  no decay or clipping) on a fixed batch of random tokens: [3]."""
  cfg = _model_cfg(width, parametrization)
  o = optim.defaults()
  o.update(dict(lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_norm=0.0))
  graphdef, params, rest = nnx.split(models.build(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tx, _ = optim.make(o, params, STEPS)
  p, r = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, VOCAB)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  def loss(p):
    logits = nnx.merge(graphdef, p, r)(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def train(p):
    def step(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, updates), s), None

    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=STEPS)
    model = nnx.merge(graphdef, p, r)
    h = model.embed(inputs)
    x = model.blocks[0](h)
    return jnp.stack([jnp.sqrt(jnp.mean(jnp.square(a))) for a in (h, x, model._logits(x))])

  return np.asarray(train(p))


def _slope(widths, rms) -> np.ndarray:
  """d log RMS / d log width per layer (least squares over the widths)."""
  return np.polyfit(np.log(widths), np.log(np.stack(rms)), 1)[0]


def test_coordinate_check_activations_flat_in_width_under_mup_and_growing_under_sp():
  mup_slopes = _slope(WIDTHS, [_trained_rms(w, "mup") for w in WIDTHS])
  sp_slopes = _slope(WIDTHS[::3], [_trained_rms(w, "sp") for w in WIDTHS[::3]])
  # Measured (2 CPU cores, seed 0): µP [0.00, -0.01, -0.12], SP (32 vs 256) [-0.01, 0.6, 0.4].
  assert np.all(np.abs(mup_slopes[:2]) < 0.1), mup_slopes  # embedding and hidden block output: flat
  # the logits: O(1), not growing; their init part vanishes as m^-1/2 (readout multiplier), the trained part stays
  assert -0.3 < mup_slopes[2] < 0.1, mup_slopes
  assert sp_slopes[1] > 0.3 and sp_slopes[2] > 0.2, sp_slopes  # SP: hidden activations and logits blow up


def test_mup_at_base_width_is_sp_exactly():
  assert np.array_equal(_trained_rms(BASE, "mup"), _trained_rms(BASE, "sp"))
  cfg = _model_cfg(BASE, "mup")
  params = nnx.state(nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  assert set(jax.tree.leaves(optim.lr_mults(params))) == {1.0}
  assert mup.logit_mult(cfg) == mup.attention_scale_mult(cfg) == 1.0


def test_each_layer_kind_gets_its_mup_rule():
  blocks = "(gated_delta_net, moe) + (attention, gr_kan)"
  kw = dict(options=dict(moe=dict(n_experts=4, top_k=2)))
  m = 2.0  # width 64 over base 32
  wide = _model_cfg(64, "mup", blocks, **kw)
  sp, mu = (nnx.state(models.build(c, rngs=nnx.Rngs(0)), nnx.Param) for c in (_model_cfg(64, "sp", blocks, **kw), wide))
  kinds = {"/".join(map(str, k)): v for k, v in mup.kinds(
    nnx.eval_shape(lambda: models.build(wide, rngs=nnx.Rngs(0))), wide, readout="unembed").items()}
  expected = {
    "blocks/0/mixer/q_proj/kernel": mup.HIDDEN, "blocks/0/mixer/o_proj/kernel": mup.HIDDEN,
    "blocks/0/mixer/b_proj/kernel": mup.OUTPUT, "blocks/0/mixer/a_proj/kernel": mup.OUTPUT,  # β, log-decay [D, H]
    "blocks/0/mixer/decay/A_log": mup.SCALAR, "blocks/0/mixer/q_conv/weight": mup.VECTOR,
    "blocks/0/ffn/router/kernel": mup.OUTPUT, "blocks/0/ffn/experts/ffn/up/kernel": mup.HIDDEN,
    "blocks/1/mixer/q/kernel": mup.HIDDEN, "blocks/1/ffn/fc1/kernel": mup.HIDDEN,
    "blocks/1/ffn/act1/numerator": mup.SCALAR, "blocks/1/ffn/act1/denominator": mup.SCALAR,  # rational coefficients
    "blocks/1/ffn/fc1/bias": mup.VECTOR, "blocks/1/ffn_norm/scale": mup.VECTOR,
    "embed/embedding": mup.VECTOR, "unembed/kernel": mup.READOUT,
  }
  assert {k: kinds[k] for k in expected} == expected
  factor = {mup.OUTPUT: m ** -0.5, mup.READOUT: m ** 0.5}
  flat_sp = dict(nnx.to_flat_state(sp))
  for path, var in nnx.to_flat_state(mu):
    kind = kinds["/".join(map(str, path))]
    np.testing.assert_allclose(var[...], flat_sp[path][...] * factor.get(kind, 1.0), rtol=1e-6, err_msg=str(path))
    assert var.get_metadata()["lr_mult"] == (1 / m if kind in (mup.HIDDEN, mup.OUTPUT) else 1.0), path
  assert not any("lr_mult" in var.get_metadata() for _, var in nnx.to_flat_state(sp))  # SP: untouched


@pytest.mark.parametrize("overrides,match", [
  (["--config.model.parametrization=mu_p"], r"model.parametrization='mu_p' is unknown; choose one of \('sp', 'mup'\)"),
  (["--config.model.parametrization=mup"], r"model.base_width=0: µP needs .*set model.base_width, e.g."),
  (["--config.model.parametrization=mup", "--config.model.base_width=-64"], r"model.base_width=-64"),
])
def test_parametrization_config_errors(overrides, match):
  c = tiny_lm()
  c.lock()
  config_lib.apply_overrides(c, overrides)
  with pytest.raises(ConfigError, match=match):
    validate(c)


def test_mup_refuses_models_other_than_the_lm():
  from experiments import inr

  c = inr.get_config("local")
  with c.model.unlocked():
    c.model.parametrization = "mup"
  with pytest.raises(ConfigError, match=r"model.parametrization='mup' is implemented for model.kind='lm' only"):
    validate(c)
