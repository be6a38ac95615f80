"""The block-pattern LM: patterns, shapes, logical axes, attention variants, decode == forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from models import block_pattern
from models.lm import LM, generate
from models.lm import check as lm_check
from tests.foundation_configs import tiny_lm


def test_block_pattern_expands_repeats_and_groups():
  assert block_pattern.parse("(a, f) * 2 + (b, none)") == [("a", "f"), ("a", "f"), ("b", "none")]
  assert block_pattern.parse("((a, f) + (b, g)) * 2") == [("a", "f"), ("b", "g")] * 2
  with pytest.raises(ValueError, match="repeat count"):
    block_pattern.parse("(a, f) * x")
  with pytest.raises(ValueError, match="trailing"):
    block_pattern.parse("(a, f))")


@pytest.fixture(scope="module")
def model_and_cfg():
  cfg = tiny_lm().model
  cfg.vocab_size = 64
  return LM(cfg, rngs=nnx.Rngs(0)), cfg


def test_forward_shape_dtype_and_layers(model_and_cfg):
  model, _ = model_and_cfg
  tokens = jnp.ones((2, 11), jnp.int32)
  logits = model(tokens)
  assert logits.shape == (2, 11, 64) and logits.dtype == jnp.float32
  assert len(model.blocks) == 2
  assert model.blocks[1].mixer.window == 8 and model.blocks[0].mixer.window is None
  assert model.blocks[0].mixer.n_kv_heads == 2  # GQA


def test_every_parameter_has_logical_axes(model_and_cfg):
  model, _ = model_and_cfg
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("axes")
    assert axes is not None and len(axes) == var.ndim, path


def test_lm_refuses_bidirectional_mixers():
  """Causality of every mixer is tested in tests/test_mixers.py; here the LM's refusal, before building."""
  cfg = tiny_lm().model
  cfg.blocks = "(attention, mlp) + (karat, mlp)"
  with pytest.raises(ValueError, match=r"model.options.karat.causal=False \(the default of mixer 'karat'\).*"
                                       r"layer 1.*set model.options.karat.causal=True"):
    LM(cfg, rngs=nnx.Rngs(0))
  cfg.blocks = "(encoder, mlp)"
  cfg.options.encoder = dict(layer="attention", causal=False)
  with pytest.raises(ValueError, match=r"model.options.encoder.causal=False \(set\).*encoder.causal=True"):
    lm_check(cfg)
  cfg.options.encoder.causal = True
  lm_check(cfg)


@pytest.fixture(scope="module")
def hybrid():
  """A recurrent and an attention layer, for packed rows through the whole LM."""
  cfg = tiny_lm().model
  cfg.update(dict(vocab_size=64, blocks="(gated_delta_net, mlp) + (attention, mlp)"))
  cfg.options.gated_delta_net = dict(chunk_size=8)
  return LM(cfg, rngs=nnx.Rngs(1))


def test_packed_rows_equal_documents_alone(hybrid):
  """LM(tokens, segment_ids) hands the documents to every block: logits equal each document run alone."""
  tokens = jax.random.randint(jax.random.key(5), (2, 19), 0, 64)
  lengths = [(4, 1, 14), (9, 10)]
  segment_ids = jnp.asarray(np.concatenate([np.repeat(np.arange(len(n)), n)[None] for n in lengths]))
  docs = [(b, s, s + n) for b, ns in enumerate(lengths) for s, n in zip(np.cumsum((0, *ns[:-1])), ns)]
  rows = jnp.zeros((len(docs), 19), jnp.int32)  # each document alone, left-aligned
  for i, (b, s, e) in enumerate(docs):
    rows = rows.at[i, : e - s].set(tokens[b, s:e])
  forward = nnx.jit(lambda m, t, s: m(t, segment_ids=s))
  packed = forward(hybrid, tokens, segment_ids)
  single = forward(hybrid, jnp.concatenate([rows, tokens]), None)  # the rows alone, then unpacked
  for i, (b, s, e) in enumerate(docs):
    np.testing.assert_allclose(packed[b, s:e], single[i, : e - s], rtol=1e-4, atol=1e-4)
  assert not np.allclose(packed, single[len(docs):], atol=1e-3)  # the documents did change the logits


def test_generate_after_packed_prompt_continues_its_last_document(hybrid):
  """Generating after a packed prompt == generating after its last document alone (the earlier documents
  do change the logits when not masked: test_packed_rows_equal_documents_alone)."""
  prompt = jax.random.randint(jax.random.key(6), (2, 9), 0, 64)
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2, 2], [5, 6, 6, 3, 3, 3, 3, 3, 3]])  # last documents: 6 tokens
  packed = generate(hybrid, prompt, 5, segment_ids=segment_ids)
  alone = generate(hybrid, prompt[:, 3:], 5)
  np.testing.assert_array_equal(packed[:, :9], prompt)
  np.testing.assert_array_equal(packed[:, 9:], alone[:, 6:])


def test_sliding_window_limits_context():
  from layers.context import LayerContext

  ctx = LayerContext(d_model=16, n_heads=2)
  attn = registry.build("mixer", "attention", ctx, rngs=nnx.Rngs(0), window=3)
  x = jax.random.normal(jax.random.key(1), (1, 10, 16))
  y = attn(x)
  x2 = x.at[:, 2].set(5.0)  # position 2 is outside the window of positions >= 5
  y2 = attn(x2)
  np.testing.assert_allclose(y[:, 5:], y2[:, 5:], rtol=1e-5, atol=1e-5)
  assert not np.allclose(y[:, 2:5], y2[:, 2:5])


def test_decode_step_by_step_equals_forward(model_and_cfg):
  model, _ = model_and_cfg
  tokens = jax.random.randint(jax.random.key(2), (2, 13), 0, 64)
  full = model(tokens)
  caches = model.init_cache(2, 13)
  step = jax.jit(lambda m, t, c, p: m.decode(t, c, p))
  outs = []
  for t in range(13):
    logits, caches = step(model, tokens[:, t:t + 1], caches, jnp.int32(t))
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_generate_greedy_matches_forward_argmax(model_and_cfg):
  model, _ = model_and_cfg
  prompt = jax.random.randint(jax.random.key(3), (2, 5), 0, 64)
  out = generate(model, prompt, 6)
  assert out.shape == (2, 11)
  np.testing.assert_array_equal(out[:, :5], prompt)
  np.testing.assert_array_equal(jnp.argmax(model(out)[:, 4:-1], -1), out[:, 5:])


def test_tied_and_untied_embeddings():
  cfg = tiny_lm().model
  tied = LM(cfg, rngs=nnx.Rngs(0))
  cfg.tie_embeddings = False
  untied = LM(cfg, rngs=nnx.Rngs(0))
  n = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  assert n(untied) - n(tied) == cfg.d_model * cfg.vocab_size
  assert untied(jnp.ones((1, 4), jnp.int32)).shape == (1, 4, cfg.vocab_size)


@pytest.mark.parametrize("name", ["mlp", "glu", "swiglu", "geglu", "reglu"])
def test_feedforwards(name):
  from layers.context import LayerContext

  ctx = LayerContext(d_model=8, d_ff=16, activation="relu2")
  ffn = registry.build("ffn", name, ctx, rngs=nnx.Rngs(0))
  assert ffn(jnp.ones((3, 8))).shape == (3, 8)


@pytest.mark.parametrize("name", ["relu", "gelu", "silu", "relu2"])
def test_fixed_activations(name):
  from layers.context import LayerContext

  act = registry.build("activation", name, LayerContext(d_model=4), rngs=nnx.Rngs(0))
  x = jnp.array([-2.0, -0.5, 0.0, 1.5])
  want = {"relu": jax.nn.relu(x), "gelu": jax.nn.gelu(x, approximate=False), "silu": x * jax.nn.sigmoid(x),
          "relu2": jnp.maximum(x, 0) ** 2}[name]
  np.testing.assert_allclose(act(x), want, rtol=1e-6)


def test_norms_compute_in_fp32():
  from layers.norms import layer_norm, rms_norm

  x = (jnp.arange(8, dtype=jnp.float32) * 1e3).astype(jnp.bfloat16)
  y = rms_norm(x, None)
  assert y.dtype == jnp.bfloat16
  ref = np.asarray(x, np.float64) / np.sqrt(np.mean(np.asarray(x, np.float64) ** 2) + 1e-6)
  np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-2)
  z = layer_norm(jnp.array([1.0, 2.0, 3.0]), None, None)
  np.testing.assert_allclose(z, (np.array([1, 2, 3]) - 2) / np.sqrt(2 / 3 + 1e-6), rtol=1e-5)


def test_registry_unknown_name_suggests():
  with pytest.raises(ValueError, match=r"Did you mean.*swiglu"):
    registry.lookup("ffn", "swigl")


def test_bidirectional_attention_sees_the_future():
  from layers.context import LayerContext

  ctx = LayerContext(d_model=16, n_heads=2, n_kv_heads=2)
  attn = registry.build("mixer", "attention", ctx, rngs=nnx.Rngs(0), causal=False, rope_theta=None)
  x = jax.random.normal(jax.random.key(4), (1, 6, 16))
  y, y2 = attn(x), attn(x.at[:, 5].set(3.0))
  assert not np.allclose(y[:, :5], y2[:, :5])  # earlier outputs depend on the last token
  q, k, v = (attn.q(x).reshape(1, 6, 2, 8), attn.k(x).reshape(1, 6, 2, 8), attn.v(x).reshape(1, 6, 2, 8))
  w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8), axis=-1)
  ref = attn.o(jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(1, 6, 16))
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="sliding window needs causal"):
    registry.build("mixer", "attention", ctx, rngs=nnx.Rngs(0), causal=False, window=2)
