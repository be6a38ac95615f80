"""The issue-15 layers beyond the registry-wide mixer contract (tests/test_mixers.py): Gated DeltaProduct
with one step is Gated DeltaNet, RWKV-7's value residual through the LM (decode, packing, generate,
remat), forgetting attention without forgetting is softmax attention, every parameter is used, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.context import LayerContext
from models.lm import LM, generate
from tests.foundation_configs import tiny_lm
from tests.test_mixers import perturb

D, H, HEAD = 32, 2, 16
NEW = ("kda", "gated_deltaproduct", "rwkv7", "forgetting_attention")
PRO = dict(output_gate=True, output_norm=True, qk_norm=True, kv_shift=True)


def _ctx(layer_idx: int = 0, dtype=jnp.float32) -> LayerContext:
  return LayerContext(d_model=D, n_heads=H, n_kv_heads=H, head_dim=HEAD, d_ff=2 * D, layer_idx=layer_idx,
                      n_layers=3, dtype=dtype)


def _x(b: int = 2, t: int = 11, seed: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (b, t, D))


@nnx.jit
def _forward(layer, x):
  return layer(x)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_gated_deltaproduct_with_one_step_is_gated_delta_net(mode):
  """Same parameters (copied), same outputs: the product op over one step per token is the gated delta rule."""
  gdn = registry.build("mixer", "gated_delta_net", _ctx(), rngs=nnx.Rngs(0), mode=mode, chunk_size=8)
  gdp = registry.build("mixer", "gated_deltaproduct", _ctx(), rngs=nnx.Rngs(1), mode=mode, chunk_size=8,
                       num_householder=1, allow_neg_eigval=False)
  x = _x(t=21)
  assert _rel(_forward(gdp, x), _forward(gdn, x)) > 1e-2  # different parameters before the copy
  nnx.update(gdp, nnx.state(gdn, nnx.Param))
  np.testing.assert_allclose(_forward(gdp, x), _forward(gdn, x), rtol=1e-5, atol=1e-6)


def test_gated_deltaproduct_steps_widen_projections():
  gdp = registry.build("mixer", "gated_deltaproduct", _ctx(), rngs=nnx.Rngs(0), num_householder=3)
  assert gdp.k_proj.kernel.shape == (D, 3 * H * HEAD) and gdp.v_proj.kernel.shape == (D, 3 * H * 2 * HEAD)
  assert gdp.b_proj.kernel.shape == (D, 3 * H) and gdp.q_proj.kernel.shape == (D, H * HEAD)
  with pytest.raises(ValueError, match="num_householder"):
    registry.build("mixer", "gated_deltaproduct", _ctx(), rngs=nnx.Rngs(0), num_householder=0)


def _rwkv_lm(blocks: str = "(rwkv7, rwkv7_channel_mix) * 3", remat: str = "none", **options) -> LM:
  cfg = tiny_lm().model
  cfg.update(dict(vocab_size=32, d_model=D, n_heads=H, n_kv_heads=H, d_ff=2 * D, norm="layernorm",
                  blocks=blocks, remat=remat))
  cfg.options.update(options)
  return perturb(LM(cfg, rngs=nnx.Rngs(0)))


@functools.cache
def _rwkv_run() -> dict:
  """One jitted pass over the RWKV-7 LM: forward, token-by-token decode, packed rows, remat gradients."""
  model, remat = _rwkv_lm(), _rwkv_lm(remat="full")
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 32)
  seg = jnp.array([[0] * 5 + [1] * 7, [4] * 12], jnp.int32)

  @nnx.jit
  def go(model, remat, tokens, seg):
    def step(caches, inp):
      tok, t = inp
      logits, caches = model.decode(tok[:, None], caches, t)
      return caches, logits[:, 0]

    _, stepped = jax.lax.scan(step, model.init_cache(2, 12), (tokens.T, jnp.arange(12, dtype=jnp.int32)))
    loss = lambda m: jnp.sum(jnp.sin(m(tokens)))  # noqa: E731
    return dict(full=model(tokens), stepped=jnp.moveaxis(stepped, 0, 1), packed=model(tokens, segment_ids=seg),
                doc=model(tokens[:1, 5:]), remat=remat(tokens), grad=nnx.grad(loss)(model),
                remat_grad=nnx.grad(loss)(remat))

  return jax.device_get(go(model, remat, tokens, seg)) | {"model": model}


def test_rwkv7_lm_value_residual_in_every_layer_but_the_first():
  model = _rwkv_run()["model"]
  assert [block.mixer.value_residual for block in model.blocks] == [False, True, True]
  assert not hasattr(model.blocks[0].mixer, "v_down") and model.blocks[1].mixer.v_down.kernel.shape == (D, 32)


def test_rwkv7_lm_decode_packing_remat():
  r = _rwkv_run()
  assert np.all(np.isfinite(r["full"])) and np.std(r["full"]) > 1e-2
  np.testing.assert_allclose(r["stepped"], r["full"], rtol=1e-4, atol=1e-5)
  # A document packed after another equals the document alone (value residual and both token shifts included).
  np.testing.assert_allclose(r["packed"][0, 5:], r["doc"][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r["packed"][1], r["full"][1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(r["packed"][0, 5:], r["full"][0, 5:], atol=1e-3)
  np.testing.assert_allclose(r["remat"], r["full"], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), r["remat_grad"], r["grad"])


def test_generate_is_greedy_forward():
  """models.lm.generate (prefill and sampling through each layer's decode) picks the forward's argmax; one
  hybrid holds every new layer (its first rwkv7 layer publishes the values the second mixes in)."""
  cfg = tiny_lm().model
  cfg.update(dict(vocab_size=32, d_model=D, n_heads=H, n_kv_heads=H, d_ff=2 * D,
                  blocks="(kda, swiglu) + (gated_deltaproduct, swiglu) + (forgetting_attention, swiglu)"
                         " + (rwkv7_first, rwkv7_channel_mix) + (rwkv7, swiglu)"))
  cfg.options.rwkv7_first = {"layer": "rwkv7", "value_residual": False}
  model = perturb(LM(cfg, rngs=nnx.Rngs(0)))
  out = generate(model, jax.random.randint(jax.random.key(4), (2, 4), 0, 32), 5)
  np.testing.assert_array_equal(jnp.argmax(_forward(model, out)[:, 3:-1], -1), out[:, 4:])


def test_rwkv7_value_residual_reads_the_first_layer_values():
  layer = perturb(registry.build("mixer", "rwkv7", _ctx(layer_idx=1), rngs=nnx.Rngs(0)))
  x = _x()
  v_a, v_b = _x(seed=5), _x(seed=6)
  y_a, y_b = (layer(x, layer_values={"v_first": v}) for v in (v_a, v_b))
  assert not np.allclose(y_a, y_b, atol=1e-4)
  layer.v0[...] = jnp.full_like(layer.v0[...], -1e4)  # sigmoid -> 0: v is kept, v_first ignored
  np.testing.assert_array_equal(layer(x, layer_values={"v_first": v_a}), layer(x, layer_values={"v_first": v_b}))
  with pytest.raises(ValueError, match="value_residual"):
    layer(x)
  first = registry.build("mixer", "rwkv7", _ctx(layer_idx=0), rngs=nnx.Rngs(0))
  values = {}
  first(x, layer_values=values)
  assert values["v_first"].shape == (2, 11, H * HEAD)


def test_rwkv7_hybrid_needs_a_first_rwkv7_layer():
  """After an attention layer, the first rwkv7 layer must publish v_first (value_residual=False)."""
  bad = _rwkv_lm("(attention, swiglu) + (rwkv7, swiglu) * 2")
  with pytest.raises(ValueError, match="value_residual=False"):
    bad(jnp.zeros((1, 4), jnp.int32))
  ok = _rwkv_lm("(attention, swiglu) + (rwkv7_first, swiglu) + (rwkv7, swiglu)",
                rwkv7_first={"layer": "rwkv7", "value_residual": False})
  assert np.all(np.isfinite(_forward(ok, jnp.zeros((1, 4), jnp.int32))))


@pytest.mark.parametrize("rope_theta", [None, 10000.0])
def test_forgetting_attention_without_forget_gate_is_softmax_attention(rope_theta):
  """forget_gate=False (log f = 0) through the FoX layer and its op equals the attention mixer (same weights)."""
  attn = registry.build("mixer", "attention", _ctx(), rngs=nnx.Rngs(0), rope_theta=rope_theta)
  fox = registry.build("mixer", "forgetting_attention", _ctx(), rngs=nnx.Rngs(1), rope_theta=rope_theta,
                       forget_gate=False, block_size=8)
  for name in ("q", "k", "v", "o"):
    getattr(fox, name).kernel[...] = getattr(attn, name).kernel[...]
  x = _x(t=21)
  np.testing.assert_allclose(_forward(fox, x), _forward(attn, x), rtol=1e-5, atol=1e-6)
  # A forget gate that forgets: the same layer with gates of log f = log sigmoid(-2) differs.
  gated = registry.build("mixer", "forgetting_attention", _ctx(), rngs=nnx.Rngs(1), rope_theta=rope_theta,
                         block_size=8)
  nnx.update(gated, nnx.state(fox, nnx.Param))
  gated.f.bias[...] = jnp.full((H,), -2.0)
  gated.f.kernel[...] = jnp.zeros_like(gated.f.kernel[...])
  assert _rel(_forward(gated, x), _forward(attn, x)) > 1e-2


def test_forgetting_attention_gqa_decode_equals_forward():
  """4 query heads on 2 key/value heads (Pro, KV-shift per kv head): token-by-token decode == forward."""
  ctx = LayerContext(d_model=D, n_heads=4, n_kv_heads=2, head_dim=8)
  fox = perturb(registry.build("mixer", "forgetting_attention", ctx, rngs=nnx.Rngs(0), block_size=8, **PRO))
  x = _x(t=13)

  @nnx.jit
  def stepped(fox, x):
    def step(cache, inp):
      x_t, t = inp
      y, cache = fox.decode(x_t[:, None], cache, t)
      return cache, y[:, 0]

    _, ys = jax.lax.scan(step, fox.init_cache(2, 13), (jnp.moveaxis(x, 1, 0), jnp.arange(13, dtype=jnp.int32)))
    return jnp.moveaxis(ys, 0, 1)

  assert _rel(stepped(fox, x), _forward(fox, x)) < 1e-5


def _layers() -> dict:
  """Every new layer, perturbed (so no parameter sits at an initial zero that hides it), with its inputs."""
  return {
    "kda": registry.build("mixer", "kda", _ctx(), rngs=nnx.Rngs(0), chunk_size=8),
    "gated_deltaproduct": registry.build("mixer", "gated_deltaproduct", _ctx(), rngs=nnx.Rngs(0), chunk_size=8),
    "rwkv7": registry.build("mixer", "rwkv7", _ctx(layer_idx=1), rngs=nnx.Rngs(0), chunk_size=8),
    "forgetting_attention[pro]": registry.build("mixer", "forgetting_attention", _ctx(), rngs=nnx.Rngs(0),
                                                block_size=8, rope_theta=10000.0, **PRO),
    "rwkv7_channel_mix": registry.build("ffn", "rwkv7_channel_mix", _ctx(), rngs=nnx.Rngs(0)),
  }


@pytest.mark.parametrize("name", ["kda", "gated_deltaproduct", "rwkv7", "forgetting_attention[pro]",
                                  "rwkv7_channel_mix"])
def test_every_parameter_gets_a_gradient(name):
  layer = perturb(_layers()[name])
  kw = {"layer_values": {"v_first": _x(t=13, seed=7)}} if name == "rwkv7" else {}
  x, w = _x(t=13), _x(t=13, seed=3)
  graphdef, params = nnx.split(layer, nnx.Param)

  @jax.jit
  def grads(params):
    return jax.grad(lambda p: jnp.sum(w * nnx.merge(graphdef, p)(x, **kw)))(params)

  flat = jax.tree_util.tree_flatten_with_path(grads(params))[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
  assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", NEW)
def test_bfloat16_compute(name):
  """bf16 compute: output in bf16, finite and close to the fp32 layer (states and gates stay fp32)."""
  kw = {"chunk_size": 8} if name != "forgetting_attention" else {"block_size": 8}
  f32, b16 = (perturb(registry.build("mixer", name, _ctx(dtype=dt), rngs=nnx.Rngs(0), **kw))
              for dt in (jnp.float32, jnp.bfloat16))
  x = _x(t=21)
  y = _forward(b16, x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
  assert _rel(np.asarray(y, np.float32), _forward(f32, x)) < 5e-2


def test_experiment_variants_validate(spm_model):
  from experiments import deltaproduct, forgetting_transformer, kimi_linear, rwkv7
  from train import config as config_lib
  from train import validate

  # Every variant at the local scale (their patterns and options); one paper-scale model per file (slower).
  specs = ([f"experiments/forgetting_transformer.py:local,variant={v}" for v in forgetting_transformer.VARIANTS]
           + [f"experiments/kimi_linear.py:local,variant={v}" for v in kimi_linear.VARIANTS]
           + [f"experiments/rwkv7.py:local,variant={v}" for v in rwkv7.VARIANTS]
           + [f"experiments/deltaproduct.py:local,variant={v}" for v in deltaproduct.VARIANTS]
           + ["experiments/forgetting_transformer.py:variant=transformer_pro", "experiments/kimi_linear.py:size=1.7b",
              "experiments/rwkv7.py:size=1.5b,variant=rwkv7_no_vres", "experiments/deltaproduct.py:variant=dp3"])
  for spec in specs:
    config = config_lib.load(spec)
    if ":local" not in spec and "spm_model" in config.data:  # paper scale reads C4 through a SentencePiece model
      config_lib.override(config, "data.spm_model", spm_model)
    validate.validate(config, num_devices=1)


def test_experiment_paper_shapes_and_sweeps():
  from experiments import deltaproduct, forgetting_transformer, kimi_linear, rwkv7
  from models.block_pattern import parse

  c = forgetting_transformer.get_config("variant=fox_pro")
  assert (c.model.d_model, len(parse(c.model.blocks)), c.model.n_heads, c.model.d_ff) == (1536, 24, 24, 3584)
  assert (c.optim.lr, c.train.steps, c.optim.warmup_steps, c.data.seq_len) == (2e-3, 92160, 512, 16384)
  assert forgetting_transformer.get_config("variant=transformer").model.n_heads == 12
  c = kimi_linear.get_config("size=653m")
  blocks = parse(c.model.blocks)
  assert len(blocks) == 16 and [m for m, _ in blocks][3::4] == ["nope_attention"] * 4
  assert [m for m, _ in blocks].count("kda") == 12 and blocks[0][1] == "swiglu" and blocks[1][1] == "experts"
  assert (c.model.d_model, c.model.n_heads, c.model.head_dim, c.data.batch_size) == (1216, 16, 128, 336)
  c = rwkv7.get_config("size=0.1b")
  assert (c.model.d_model, c.model.n_heads, len(parse(c.model.blocks)), c.model.norm) == (768, 12, 12, "layernorm")
  assert parse(c.model.blocks)[0] == ("rwkv7", "rwkv7_channel_mix")
  assert deltaproduct.get_config("variant=dp3").model.options.dp3.num_householder == 3
  for module, n_runs in ((forgetting_transformer, 8), (kimi_linear, 6), (rwkv7, 8), (deltaproduct, 8)):
    runs: list[dict] = []
    module.sweep(lambda runs=runs, **kw: runs.append(kw), "local")
    assert len(runs) == n_runs and {r["seed"] for r in runs} == {0, 1}
