"""Sequence parallelism on 8 CPU devices: everything sharded over the "sequence" mesh axis equals the unsharded
computation (outputs and gradients), with packed documents crossing shard boundaries, T a multiple of the
shard count but not of shards x chunk size; the communication of linear layers does not grow with T.

Meshes: ops, mixers and attention on (data=2, sequence=4); the LM on (expert=2, sequence=4) with an MoE
feed-forward (expert parallelism inside); the train step on (data=2, tensor=2, sequence=2).
"""

import doctest
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.sequence_parallel import collective_bytes, collectives
from experiments import long_context
from layers import registry
from layers import sequence_parallel as sp
from layers.attention.block_softmax_attention import block_softmax_attention
from layers.attention.forgetting_attention import forgetting_attention
from layers.attention.sequence_parallel import sequence_parallel_attention, sequence_parallel_block_attention
from layers.attention.softmax_attention import softmax_attention
from layers.context import LayerContext
from layers.linear_attention import ops
from layers.linear_attention.sequence_parallel import recurrence
from layers.segments import document_positions
from models.lm import LM
from tests.foundation_configs import tiny_lm
from train import mesh as mesh_lib
from train import validate
from train.config import ConfigError
from train.data import pipeline
from train.loop import build_program, global_batch

B, T, D, H, K, V = 2, 48, 16, 2, 8, 4
SHARDS, CHUNK = 4, 8  # 12 tokens per shard: 1.5 chunks
MESH = mesh_lib.make_mesh(dict(data=2, sequence=SHARDS))
# Documents: starts inside shards, exactly at shard starts (12, 36), a length-1 document at a shard start,
# a document over three shards, one ending at a shard end.
SEGMENTS = jnp.array([[0] * 5 + [1] * 7 + [2] * 13 + [3] * 11 + [4] * 1 + [5] * 11,
                      [7] * 12 + [3] * 1 + [7] * 30 + [2] * 5], jnp.int32)
TIME = NamedSharding(MESH, P("data", "sequence"))


def _close(got, want, rtol=2e-5, atol=2e-5):
  """Leaf by leaf; atol scales with a leaf's largest entry (sums over many tokens, in another order)."""
  def check(g, w):
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol * max(1.0, float(np.max(np.abs(w), initial=0))))

  jax.tree.map(check, got, want)


def _sharded(fn):
  """fn jitted and traced under MESH."""
  jitted = jax.jit(fn)

  def run(*args):
    with jax.set_mesh(MESH):
      return jitted(*args)

  return run


def _op_cases():
  """{op name: (op, args)} for every op, inputs in the ranges its layers give it."""
  keys = jax.random.split(jax.random.key(0), 9)
  q = jax.random.normal(keys[0], (B, T, H, K))
  k = jax.random.normal(keys[1], (B, T, H, K))
  kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(keys[2], (B, T, H, V))
  g = -jax.nn.softplus(jax.random.normal(keys[3], (B, T, H)))
  gk = -jax.nn.softplus(jax.random.normal(keys[4], (B, T, H, K)))
  beta = jax.nn.sigmoid(jax.random.normal(keys[5], (B, T, H)))
  k2 = jax.random.normal(keys[6], (B, 2 * T, H, K))  # gated_delta_product: 2 Householder steps per token
  k2 = k2 / jnp.linalg.norm(k2, axis=-1, keepdims=True)
  v2 = jax.random.normal(keys[7], (B, 2 * T, H, V))
  beta2 = 2 * jax.nn.sigmoid(jax.random.normal(keys[8], (B, 2 * T, H)))  # negative eigenvalues
  return {"linear_attn": (ops.linear_attn, (q, k / 4, v)), "simple_gla": (ops.simple_gla, (q, k, v, g)),
          "gla": (ops.gla, (q, k, v, gk)), "delta_rule": (ops.delta_rule, (q, kn, v, 2 * beta)),
          "gated_delta_rule": (ops.gated_delta_rule, (q, kn, v, g, beta)), "kda": (ops.kda, (q, kn, v, gk, beta)),
          "gated_delta_product": (functools.partial(ops.gated_delta_product, num_householder=2), (q, k2, v2, g, beta2)),
          "dplr_delta_rule": (ops.dplr_delta_rule, (q, kn * beta[..., None], v, -kn, kn * beta[..., None], gk))}


@pytest.mark.parametrize("name", ops.__all__)
def test_op_equals_unsharded(name):
  """o, the final state and every gradient (initial state included) of each op, chunk form."""
  op, args = _op_cases()[name]
  s0 = jax.random.normal(jax.random.key(9), (B, H, K, V))

  def loss(args, s0, run):
    o, state = run(*args, initial_state=s0, output_final_state=True, chunk_size=CHUNK, segment_ids=SEGMENTS)
    return jnp.sum(jnp.sin(o)) + jnp.sum(jnp.cos(state)), (o, state)

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  want = jax.jit(functools.partial(grad, run=op))(args, s0)
  got = _sharded(functools.partial(grad, run=functools.partial(recurrence, op)))(args, s0)
  _close(got, want)


def test_recurrence_without_mesh_is_the_op_and_checks_length():
  q, k, v, beta = _op_cases()["delta_rule"][1]
  run = jax.jit(recurrence, static_argnums=0)
  np.testing.assert_array_equal(run(ops.delta_rule, q, k, v, beta)[0], jax.jit(ops.delta_rule)(q, k, v, beta)[0])
  with jax.set_mesh(MESH), pytest.raises(ValueError, match=r"T=46 is not a multiple of the 'sequence' mesh axis"):
    jax.eval_shape(functools.partial(recurrence, ops.delta_rule), q[:, :46], k[:, :46], v[:, :46], beta[:, :46])


# Small shapes and the optional branches switched on (GLA's short conv, Hedgehog with normalisation).
OPTIONS = {"karat": {"max_len": T, "causal": True}, "mamba2": {"state_size": 8}, "mom": {"n_memories": 3},
           "gla": {"conv_size": 4}, "linear_attention": {"feature_map": "hedgehog", "normalize": True},
           "rwkv7_channel_mix": {"hidden": 4 * D}, "forgetting_attention": {"block_size": CHUNK},
           "diag_attention": {"block_size": 5}}  # blocks straddle shard boundaries (12 tokens per shard)
# Feed-forwards that read neighbouring tokens are token mixers too (RWKV-7's channel mix).
TOKEN_MIXING_FFNS = [name for name in registry.names("ffn") if hasattr(registry.lookup("ffn", name), "decode")]


def _mixer(name: str, options: dict | None = None):
  kind = "ffn" if name in TOKEN_MIXING_FFNS else "mixer"
  options = {**OPTIONS.get(name, {}), **(options or {})}
  if "chunk_size" in inspect.signature(registry.lookup(kind, name)).parameters:
    options["chunk_size"] = CHUNK
  return registry.build(kind, name, LayerContext(d_model=D, n_heads=H), rngs=nnx.Rngs(0), **options)


def _is_recurrent(model) -> bool:
  """A linear (recurrent) mixer: its decoding state does not grow with max_len."""
  size = lambda n: sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: model.init_cache(1, n))))  # noqa: E731
  return size(8) == size(16)


class _MixerGrad:
  """A fixed projection of a mixer's output, its loss and parameter / input gradients: jitted unsharded, and
  compiled once per length under MESH (shared by the equality and the communication tests)."""

  def __init__(self, name: str, options: tuple = ()):
    self.model = _mixer(name, dict(options))
    graphdef, self.params, rest = nnx.split(self.model, nnx.Param, ...)
    weights = jax.random.normal(jax.random.key(2), (B, 2 * T, D))  # T and 2T (communication test)

    def loss(params, x, segment_ids, positions):
      layer = nnx.merge(graphdef, params, rest)
      y = (layer(x, segment_ids=segment_ids) if name in TOKEN_MIXING_FFNS
           else layer(x, segment_ids=segment_ids, positions=positions))
      return jnp.sum(y * weights[:, :x.shape[1]])

    self.grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    self.compiled = {}  # length -> compiled sharded grad

  def sharded(self, t: int):
    if t not in self.compiled:
      inputs = (jnp.zeros((B, t, D)), jnp.zeros((B, t), jnp.int32), jnp.zeros((B, t), jnp.int32))
      with jax.set_mesh(MESH):
        self.compiled[t] = self.grad.lower(self.params, *(jax.device_put(a, TIME) for a in inputs)).compile()
    return self.compiled[t]

  def compare(self):
    """Sharded == unsharded over packed rows (positions come with packed batches)."""
    inputs = (jax.random.normal(jax.random.key(1), (B, T, D)), SEGMENTS, document_positions(SEGMENTS))
    want = self.grad(self.params, *inputs)
    with jax.set_mesh(MESH):
      got = self.sharded(T)(self.params, *(jax.device_put(a, TIME) for a in inputs))
    _close(got, want, rtol=1e-4, atol=1e-5)


_mixer_grad = functools.cache(_MixerGrad)


@pytest.mark.parametrize("name", registry.names("mixer") + TOKEN_MIXING_FFNS)
def test_mixer_equals_unsharded(name):
  """Every registered mixer: loss, parameter and input gradients over packed rows (short-conv halos, the
  recurrences, attention's K/V exchange; token shifts are left to XLA)."""
  _mixer_grad(name).compare()


@pytest.mark.parametrize("name, options", [
  ("attention", (("sequence_parallel", "ring"), ("window", 7))),
  ("forgetting_attention", (("sequence_parallel", "ring"), ("window", 9), ("kv_shift", True), ("qk_norm", True))),
])
def test_ring_with_window_equals_unsharded(name, options):
  """The "ring" option with a sliding window shorter than a shard (FoX: its Pro block's KV-shift too)."""
  _mixer_grad(name, options).compare()


# The collectives that show a mixer really runs sequence-parallel: the all-gathered state summaries (reduce-scattered
# back in the backward); diag_attention's halo of the previous shard's keys / values instead.
EXCHANGE = {"diag_attention": {"collective-permute"}}


# Not linear in communication: attention-like mixers gather K/V by design.
@pytest.mark.parametrize("name", [n for n in registry.names("mixer")
                                  if n not in ("attention", "karat", "forgetting_attention")])
def test_linear_mixer_communication_does_not_grow_with_t(name):
  """Every collective of the compiled sharded forward + backward (per device, kind and operand shapes) at T
  and 2T: the same for recurrent mixers and block-local attention, and the exchanged summaries (or halo) are
  there (the mixer really runs sequence-parallel). Compared as sets: XLA merges identical tiny collectives of
  different hooks (the boundary ids) or not, depending on the shapes around them. Positions are given (packed
  batches carry them): derived from segment_ids, XLA all-gathers them."""
  mixer = _mixer_grad(name)
  assert _is_recurrent(mixer.model), f"{name} keeps a growing cache: not a linear mixer, list it with attention"
  at_t, at_2t = ({(kind, shapes) for kind, shapes, _ in collectives(mixer.sharded(t).as_text())} for t in (T, 2 * T))
  assert at_t == at_2t
  assert EXCHANGE.get(name, {"all-gather", "reduce-scatter"}) <= {kind for kind, _ in at_t}


def test_attention_communication_grows_with_t():
  """The check above can fail: attention all-gathers K/V, so its collectives differ between T and 2T (and the
  bytes double)."""
  def compiled(t):
    q = jnp.zeros((B, t, H, K))
    with jax.set_mesh(MESH):
      fn = jax.jit(lambda q: sequence_parallel_attention(q, q, q, method="all_gather"))
      return fn.lower(jax.device_put(q, TIME)).compile().as_text()

  at_t, at_2t = compiled(T), compiled(2 * T)
  assert {c[:2] for c in collectives(at_t)} != {c[:2] for c in collectives(at_2t)}
  assert collective_bytes(at_2t)["all-gather"] > 1.9 * collective_bytes(at_t)["all-gather"]


@pytest.mark.parametrize("method", ["all_gather", "ring"])
@pytest.mark.parametrize("causal, window", [(True, None), (True, 5), (False, None)])
def test_attention_equals_softmax_attention(method, causal, window):
  """GQA, V != K, documents; causal, a window shorter than a shard, bidirectional; o and all gradients."""
  keys = jax.random.split(jax.random.key(3), 4)
  q = jax.random.normal(keys[0], (B, T, 4, K))
  k = jax.random.normal(keys[1], (B, T, 2, K))
  v = jax.random.normal(keys[2], (B, T, 2, V))
  w = jax.random.normal(keys[3], (B, T, 4, V))

  def loss(q, k, v, attend):
    return jnp.sum(attend(q, k, v, causal=causal, window=window, segment_ids=SEGMENTS) * w)

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
  want = jax.jit(functools.partial(grad, attend=softmax_attention))(q, k, v)
  got = _sharded(functools.partial(grad, attend=functools.partial(sequence_parallel_attention, method=method)))(
    q, k, v)
  _close(got, want)


@pytest.mark.parametrize("method", ["all_gather", "ring"])
def test_forgetting_attention_equals_unsharded(method):
  """Forget gates (FoX): o and every gradient, gates included, against forgetting_attention; GQA, documents,
  a window."""
  keys = jax.random.split(jax.random.key(5), 5)
  q = jax.random.normal(keys[0], (B, T, 4, K))
  k = jax.random.normal(keys[1], (B, T, 2, K))
  v = jax.random.normal(keys[2], (B, T, 2, V))
  g = jax.nn.log_sigmoid(2 + jax.random.normal(keys[3], (B, T, 4)))
  w = jax.random.normal(keys[4], (B, T, 4, V))

  def loss(q, k, v, g, attend):
    return jnp.sum(attend(q, k, v, g) * w)

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
  want = jax.jit(functools.partial(grad, attend=lambda q, k, v, g: forgetting_attention(
    q, k, v, g, window=20, segment_ids=SEGMENTS)))(q, k, v, g)
  got = _sharded(functools.partial(grad, attend=lambda q, k, v, g: sequence_parallel_attention(
    q, k, v, window=20, segment_ids=SEGMENTS, forget_gates=g, method=method)))(q, k, v, g)
  _close(got, want)


@pytest.mark.parametrize("block_size, segment_ids, differentiate, exchanged", [
  (4, None, False, set()),  # shard boundaries are block boundaries: nothing to exchange (forward only)
  (30, SEGMENTS, True, {("collective-permute", f"{t}[1,{n}{e}]") for n in (12, 5) for t, e in (("f32", f",{H},{K}"),
                                                                                                ("s32", ""))}
   | {("all-gather", "s32[4,1,4]")}),  # 29 keys from 3 shards; the boundary ids
])
def test_block_attention_equals_block_softmax_attention(block_size, segment_ids, differentiate, exchanged):
  """The loss (and the gradients of q, k, v) against the unsharded block softmax (positions derived from the
  documents, inside the shards); the collectives (but the loss's all-reduce) are only the halo's keys / values
  and the documents' boundary ids."""
  keys = jax.random.split(jax.random.key(6), 4)
  q, k, w = (jax.random.normal(key, (B, T, H, K)) for key in keys[:3])
  v = jax.random.normal(keys[3], (B, T, H, K))

  def loss(q, k, v, attend):
    return jnp.sum(attend(q, k, v, block_size=block_size, segment_ids=segment_ids) * w)

  fn = jax.value_and_grad(loss, argnums=(0, 1, 2)) if differentiate else loss
  want = jax.jit(functools.partial(fn, attend=block_softmax_attention))(q, k, v)
  with jax.set_mesh(MESH):
    run = jax.jit(functools.partial(fn, attend=sequence_parallel_block_attention)).lower(q, k, v).compile()
    _close(run(q, k, v), want)
  kv = {(kind, shapes) for kind, shapes, _ in collectives(run.as_text()) if kind != "all-reduce"}
  assert kv == exchanged


def test_attention_errors():
  q = jnp.zeros((B, T, H, K))
  with pytest.raises(ValueError, match="method must be one of"):
    sequence_parallel_attention(q, q, q, method="tree")
  with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
    sequence_parallel_attention(q, q, q)
  with pytest.raises(ValueError, match="sequence_parallel must be one of"):
    _mixer("attention", {"sequence_parallel": "tree"})
  with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
    sequence_parallel_block_attention(q, q, q, block_size=4)


def test_halo_needs_enough_tokens_per_shard():
  x = jnp.zeros((B, 8, D))  # 2 tokens per shard; a short conv of width 4 reaches back 3
  with jax.set_mesh(MESH), pytest.raises(ValueError, match="2 tokens per 'sequence' shard are fewer than the 3"):
    jax.eval_shape(lambda x: sp.with_halo(lambda x, halo, seg: x, x, (), None, 3), x)


def test_hybrid_lm_with_expert_parallel_moe_equals_unsharded():
  """A hybrid LM (Gated DeltaNet with short convs, attention, GLA, an expert-parallel MoE feed-forward) on
  (expert=2, sequence=4): logits and every parameter gradient of the LM loss. (The expert-parallel MoE alone,
  on (data=4, expert=2), moves the tied embedding's gradient by up to 1.6e-5 of its largest entry: hence atol.)"""
  c = tiny_lm().model
  c.update(dict(d_model=D, n_heads=H, n_kv_heads=1, d_ff=32, vocab_size=32,
                blocks="(gated_delta_net, swiglu) + (attention, moe) + (gla, swiglu)"))
  c.options = dict(gated_delta_net=dict(chunk_size=CHUNK), gla=dict(chunk_size=CHUNK),
                   moe=dict(n_experts=4, top_k=2))
  model = LM(c, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(4), (B, T), 0, c.vocab_size)

  def loss(params, tokens, segment_ids):
    logits = nnx.merge(graphdef, params, rest)(tokens, segment_ids=segment_ids)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  want = grad(params, tokens, SEGMENTS)
  mesh = mesh_lib.make_mesh(dict(data=1, expert=2, sequence=SHARDS))
  time = NamedSharding(mesh, P(None, "sequence"))
  with jax.set_mesh(mesh):
    got = grad(params, jax.device_put(tokens, time), jax.device_put(SEGMENTS, time))
  _close(got, want, rtol=1e-4, atol=3e-5)


def test_train_step_on_a_sequence_mesh_equals_single_device():
  """The training loop's step on (data=2, tensor=2, sequence=2): batches split over data x sequence,
  parameters over tensor; loss, gradient norm and updated parameters equal one device's."""
  c = tiny_lm(batch_size=4)
  c.model.blocks = "(gated_delta_net, swiglu) + (attention, swiglu)"
  c.model.options = dict(gated_delta_net=dict(chunk_size=CHUNK))
  c.mesh.shape.update(dict(data=2, tensor=2, sequence=2))
  c.optim.eps = 1.0  # Adam's first step is then ~lr * g, not lr * sign(g): parameters compare like gradients
  validate.validate(c)
  program = build_program(c, mesh_lib.make_mesh(c.mesh.shape))
  assert program.batch_sharding.spec == P("data", "sequence")
  single = build_program(c, mesh_lib.make_mesh(dict(data=1), devices=jax.devices()[:1]))
  batch = next(pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size))
  results = []
  for p in (program, single):
    with jax.set_mesh(p.mesh):
      state, metrics = p.train_step(p.init_state(), global_batch(batch, p.batch_sharding))
    results.append((jax.device_get(metrics), jax.device_get(state["params"])))
  (m_seq, p_seq), (m_one, p_one) = results
  np.testing.assert_allclose(m_seq["loss"], m_one["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_seq["grad_norm"], m_one["grad_norm"], rtol=1e-4)
  _close(p_seq, p_one, rtol=1e-5, atol=1e-6)


def test_row_group_processes_splitting_rows_along_t_load_the_same_rows():
  """Multi-host data: each process loads the rows its devices hold (faked: processes as groups of devices)."""
  sharding = mesh_lib.batch_sharding(MESH, tiny_lm().mesh.rules.to_dict())  # rows over data, T over sequence
  position = {device: i for i, device in enumerate(MESH.devices.flat)}
  groups = lambda n: [mesh_lib.row_group(sharding, p, lambda d: position[d] // n) for p in range(8 // n)]  # noqa: E731
  assert groups(2) == [(0, 2), (0, 2), (1, 2), (1, 2)]  # 2 processes split each row shard along T
  assert groups(4) == [(0, 2), (1, 2)]  # one row shard per process
  assert groups(8) == [(0, 1)]
  rows4 = mesh_lib.batch_sharding(mesh_lib.make_mesh(dict(data=4, sequence=2)), tiny_lm().mesh.rules.to_dict())
  position = {device: i for i, device in enumerate(rows4.mesh.devices.flat)}
  with pytest.raises(ValueError, match=r"holds batch row shards \[1, 2\] .* not one aligned contiguous block"):
    mesh_lib.row_group(rows4, 0, lambda d: int(position[d] not in (2, 3, 4, 5)))  # rows 1 and 2


@pytest.mark.parametrize("key, value, match", [
  ("data.seq_len", 23, r"data.seq_len=23 .* multiple of mesh.shape.sequence=2"),
  ("model.kind", "mlp", r"mesh.shape.sequence=2 splits the sequence .* model.kind='lm'"),
])
def test_validation_of_the_sequence_axis(key, value, match):
  c = tiny_lm()
  c.mesh.shape.update(dict(data=-1, sequence=2))
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ConfigError, match=match):
    validate.validate(c)


def test_long_context_experiment_configs(spm_model):
  """Paper scale validates on 64 devices in 8 processes (sequence shards across hosts); :local on 8; the sweep."""
  for arg in (None, "seq_len=262144,shards=64"):
    c = long_context.get_config(arg)
    c.data.spm_model = spm_model  # paper scale reads PG-19 through a SentencePiece model
    validate.validate(c, num_devices=64, process_count=8)
  local = long_context.get_config("local")
  validate.validate(local, num_devices=8, process_count=1)
  assert local.mesh.shape.sequence == 4 and "attention" in local.model.blocks
  runs = []
  long_context.sweep(lambda **overrides: runs.append(overrides))
  assert {(r["mesh.shape.sequence"], r["model.options.attention.sequence_parallel"]) for r in runs} == {
    (1, "all_gather"), (2, "all_gather"), (4, "all_gather"), (4, "ring")}


def test_boundaries_number_documents_globally():
  """Document indices of each shard's first token, and which shards start with a new document."""
  def body(segment_ids):
    b = sp.boundaries(segment_ids)
    return b.offset[:, None], b.here()[:, None], sp.document_positions(segment_ids)

  with jax.set_mesh(MESH):
    where = sp.split(B)
    offset, starts, positions = jax.jit(sp.shard_map(body, where, where.time, (where.time,) * 3))(SEGMENTS)
  # Row 0 documents start at 0, 5, 12, 25, 36, 37; row 1 at 0, 12, 13, 43. Shards start at 0, 12, 24, 36.
  np.testing.assert_array_equal(offset, [[0, 2, 2, 4], [0, 1, 2, 2]])
  np.testing.assert_array_equal(starts, [[False, True, False, True], [False, True, False, False]])
  np.testing.assert_array_equal(positions, document_positions(SEGMENTS))  # row 1: a document over three shards


@pytest.mark.parametrize("fn", [recurrence, sequence_parallel_attention, sequence_parallel_block_attention])
def test_docstring_examples(fn):
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder().find(fn, globs={"jnp": jnp, "jax": jax, "delta_rule": ops.delta_rule,
                                                      "softmax_attention": softmax_attention,
                                                      "block_softmax_attention": block_softmax_attention,
                                                      fn.__name__: fn}):
    runner.run(test)
  assert runner.summarize().failed == 0 and runner.summarize().attempted > 0
