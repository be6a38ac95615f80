"""Decoder-only language model assembled from a block pattern of (token mixer, feed-forward) names.

Each layer: x += mixer(norm(x)); x += ffn(norm(x)) (pre-norm residual). Layers come from
`layers.registry`, so ablating a layer type is a config change. `generate` decodes token by token
through each mixer's `decode` / `init_cache`, which must equal the full forward pass.

Packed rows: `LM(tokens, segment_ids=..., positions=...)` hands both to every mixer, so no
document sees another (positions default to per-document positions from segment_ids). Decoding
takes a segment id per token too: after a prompt holding several documents, decoding continues
the last one exactly as if it alone had been the prompt.
The LM is causal: it refuses a bidirectional mixer (one built with causal=False) before building.
Layers that share values across depth (RWKV-7's value residual) get one `layer_values` dict per forward /
decode call, threaded through the blocks in order; a feed-forward that reads neighbouring tokens (RWKV-7's
channel mix) is called and cached like a mixer (the contract is in layers/registry.py).
"""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from layers import registry, segments
from layers.context import LayerContext
from layers.core import Embed, Linear
from layers.sharding import constrain
from models.block_pattern import parse, parse_groups
from models.scanned import Layers, ScannedGroup, check_stackable

NONE = "none"
# d_model, n_layers, n_heads, d_ff (SwiGLU hidden). GPT-3 / Llama-style shapes; "1.3b" is also the 1B dense
# model of PolyCom and OLMo (about 1.2B parameters outside the embeddings).
LM_SIZES = {
  "tiny": dict(d_model=64, n_layers=2, n_heads=2, d_ff=192),
  "small": dict(d_model=128, n_layers=4, n_heads=4, d_ff=384),
  "125m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=2048),
  "340m": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=2816),
  "1.3b": dict(d_model=2048, n_layers=24, n_heads=16, d_ff=5632),
}
ACTIVATION = ("batch", "length", "embed")  # the residual stream [B, T, D]
# model.remat: what a block keeps for the backward pass; the rest is recomputed (jax.checkpoint policies)
REMAT = {
  "none": None,  # keep everything (no recomputation)
  "full": jax.checkpoint_policies.nothing_saveable,  # keep each block's input only
  "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute elementwise work
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls, not attention scores
}


def lm_model_config(size: str | None = None) -> ml_collections.ConfigDict:
  """The LM's `config.model` section, every option with its default: a 2-layer attention + SwiGLU LM of
  width 128, or the shape of `size` (an LM_SIZES key: width, heads, SwiGLU width, layers)."""
  if size is not None and size not in LM_SIZES:
    raise ValueError(f"unknown LM size {size!r}; known: {sorted(LM_SIZES)}")
  shape = LM_SIZES[size] if size else dict(d_model=128, n_layers=2, n_heads=4, d_ff=384)
  return ml_collections.ConfigDict(dict(
    kind="lm", vocab_size=256, d_model=shape["d_model"], n_heads=shape["n_heads"], n_kv_heads=0, head_dim=0,
    d_ff=shape["d_ff"], activation="gelu", norm="rmsnorm", blocks=f"(attention, swiglu) * {shape['n_layers']}",
    options=ml_collections.ConfigDict(), tie_embeddings=True,
    dtype="float32", param_dtype="float32", remat="none", scan_layers=False,
  ))


def remat_policy(name: str | bool):
  """The jax.checkpoint policy of model.remat (False / True in configs saved before the names: none / full)."""
  name = {False: "none", True: "full"}.get(name, name)
  if name not in REMAT:
    raise ValueError(f"model.remat={name!r}; choose one of {sorted(REMAT)}")
  return REMAT[name]


def _constrain(x: jax.Array) -> jax.Array:
  return constrain(x, ACTIVATION)


def resolve(name: str, options) -> tuple[str, dict]:
  """(registry name, constructor options) for a pattern name; labels in `options` may alias a layer."""
  opts = dict(options.get(name, {})) if options is not None else {}
  return opts.pop("layer", name), opts


def layer_context(cfg, layer_idx: int, n_layers: int) -> LayerContext:
  return LayerContext(
    d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads or cfg.n_heads,
    head_dim=cfg.head_dim, d_ff=cfg.d_ff, activation=cfg.activation, norm=cfg.norm,
    layer_idx=layer_idx, n_layers=n_layers, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
  )


def check_blocks(cfg) -> None:
  """Validate the pattern, layer names and their options without building anything."""
  blocks = parse(cfg.blocks)
  for mixer, ffn in blocks:
    for kind, name in (("mixer", mixer), ("ffn", ffn)):
      if name != NONE:
        layer, opts = resolve(name, cfg.get("options"))
        registry.check_options(kind, layer, opts)
  registry.lookup("norm", cfg.norm)
  registry.lookup("activation", cfg.activation)
  remat_policy(cfg.get("remat", "none"))


def check_scan(cfg) -> None:
  """With model.scan_layers, every repeated group's layers must be stackable (checked on abstract copies)."""
  if not cfg.get("scan_layers", False):
    return
  for mixer, _ in parse(cfg.blocks):
    layer = None if mixer == NONE else registry.lookup("mixer", resolve(mixer, cfg.get("options"))[0])
    if inspect.isclass(layer) and _takes_layer_values(layer):
      raise ValueError(f"model.scan_layers=True with mixer {mixer!r}, which shares values across layers "
                       "(layer_values, e.g. RWKV-7's value residual) that a scan over stacked layers does not "
                       "carry; set model.scan_layers=False")
  for group, count in parse_groups(cfg.blocks):
    if count > 1:
      check_stackable([nnx.eval_shape(lambda first=first, group=group: group_layers(cfg, group, first, nnx.Rngs(0)))
                       for first in (0, len(group))])


def check(cfg) -> None:
  """`check_blocks`, every mixer causal (a later token must never change an earlier logit), and a
  scanned model's groups stackable."""
  check_blocks(cfg)
  for i, (mixer, _) in enumerate(parse(cfg.blocks)):
    if mixer == NONE:
      continue
    layer, opts = resolve(mixer, cfg.get("options"))
    if not registry.is_causal(layer, opts):
      how = "set" if "causal" in opts else f"the default of mixer {layer!r}"
      raise ValueError(f"model.options.{mixer}.causal=False ({how}): layer {i}'s mixer {mixer!r} is bidirectional, "
                       f"so tokens would see later tokens in this causal LM; set model.options.{mixer}.causal=True")
  check_scan(cfg)


def _takes_layer_values(layer) -> bool:
  return layer is not None and "layer_values" in inspect.signature(layer.__call__).parameters


class Block(nnx.Module):
  """Pre-norm residual block: mixer then feed-forward (either may be absent). A feed-forward with `decode`
  reads neighbouring tokens: it gets segment_ids / positions and a cache of its own, like a mixer."""

  def __init__(self, cfg, mixer: str, ffn: str, ctx: LayerContext, *, rngs: nnx.Rngs):
    def sub(kind: str, name: str):
      if name == NONE:
        return None, None
      layer, opts = resolve(name, cfg.get("options"))
      norm = registry.build("norm", cfg.norm, ctx, rngs=rngs)
      return norm, registry.build(kind, layer, ctx, rngs=rngs, **opts)

    self.mixer_norm, self.mixer = sub("mixer", mixer)
    self.ffn_norm, self.ffn = sub("ffn", ffn)
    self.ffn_mixes_tokens = hasattr(self.ffn, "decode")
    self.mixer_takes_layer_values = _takes_layer_values(self.mixer)

  def _values(self, layer_values: dict | None) -> dict:
    """The layer_values keyword for a mixer that takes it."""
    return {"layer_values": layer_values} if self.mixer_takes_layer_values else {}

  def _ffn(self, x: jax.Array, segment_ids, positions) -> jax.Array:
    h = self.ffn_norm(x)
    return x + (self.ffn(h, segment_ids=segment_ids, positions=positions) if self.ffn_mixes_tokens else self.ffn(h))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               layer_values: dict | None = None) -> jax.Array:  # [B, T, D]; segment_ids / positions [B, T]
    """layer_values: the model's dict of values shared across layers (mixers may add to it)."""
    if self.mixer is not None:
      x = x + self.mixer(self.mixer_norm(x), segment_ids=segment_ids, positions=positions,
                         **self._values(layer_values))
    if self.ffn is not None:
      x = self._ffn(x, segment_ids, positions)
    return x

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """{"mixer": its cache, "ffn": a token-mixing feed-forward's cache}, None where there is none."""
    for layer in (self.mixer, self.ffn if self.ffn_mixes_tokens else None):
      if layer is not None and not hasattr(layer, "decode"):
        raise NotImplementedError(f"{type(layer).__name__} has no decode(); it cannot generate")
    return {"mixer": None if self.mixer is None else self.mixer.init_cache(batch_size, max_len),
            "ffn": self.ffn.init_cache(batch_size, max_len) if self.ffn_mixes_tokens else None}

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None, layer_values: dict | None = None):  # x [B, T, D]
    cache = dict(cache)
    if self.mixer is not None:
      y, cache["mixer"] = self.mixer.decode(self.mixer_norm(x), cache["mixer"], pos, segment_ids=segment_ids,
                                            positions=positions, **self._values(layer_values))
      x = x + y
    if self.ffn_mixes_tokens:
      y, cache["ffn"] = self.ffn.decode(self.ffn_norm(x), cache["ffn"], pos, segment_ids=segment_ids,
                                        positions=positions)
      x = x + y
    elif self.ffn is not None:
      x = self._ffn(x, segment_ids, positions)
    return x, cache


def build_blocks(cfg, rngs: nnx.Rngs, *, scan: bool, remat: str | bool) -> nnx.List:
  """The pattern's blocks in order (made in layer order, so scanned or not they start from the same
  values); with `scan`, each (group, repeats) of the pattern is one ScannedGroup."""
  n = len(parse(cfg.blocks))
  if not scan:
    return nnx.List([Block(cfg, mixer, ffn, layer_context(cfg, i, n), rngs=rngs)
                     for i, (mixer, ffn) in enumerate(parse(cfg.blocks))])
  stacks, layer = [], 0
  for group, count in parse_groups(cfg.blocks):
    copies = [group_layers(cfg, group, layer + r * len(group), rngs) for r in range(count)]
    stacks.append(ScannedGroup(copies, remat_policy=remat_policy(remat), constrain=_constrain))
    layer += count * len(group)
  return nnx.List(stacks)


def group_layers(cfg, group: list[tuple[str, str]], first: int, rngs: nnx.Rngs) -> Layers:
  """One repetition of a pattern group as layers first, first + 1, ..."""
  n = len(parse(cfg.blocks))
  return Layers([Block(cfg, m, f, layer_context(cfg, first + j, n), rngs=rngs) for j, (m, f) in enumerate(group)])


class LM(nnx.Module):
  """tokens [B, T] int32 -> logits [B, T, vocab] (fp32).

  model.remat names what each block keeps for the backward pass (REMAT); model.scan_layers runs each
  repeated group of the pattern as one lax.scan over stacked variables (compile time flat in depth;
  parameters gain a leading "layers" axis, so checkpoints of the two layouts differ).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    check(cfg)
    n = len(parse(cfg.blocks))
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.scan = bool(cfg.get("scan_layers", False))
    self.blocks = build_blocks(cfg, rngs, scan=self.scan, remat=cfg.get("remat", "none"))
    self.final_norm = registry.build("norm", cfg.norm, layer_context(cfg, n, n), rngs=rngs)
    self.unembed = None if cfg.tie_embeddings else Linear(
      cfg.d_model, cfg.vocab_size, axes=("embed", "vocab"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat_policy = remat_policy(cfg.get("remat", "none"))

  def extra_flops_per_token(self, seq_len: int) -> float:
    """The tied output projection (the embedding table is otherwise only looked up)."""
    return 2.0 * self.embed.embedding.size if self.unembed is None else 0.0

  def _logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.unembed is None else self.unembed(x)
    return logits.astype(jnp.float32)

  def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """tokens [B, T] -> logits [B, T, V]; segment_ids [B, T] (document of each token, None: one per row)
    and positions [B, T] (in its document; None: derived from segment_ids) reach every mixer."""
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, tokens.shape)
      positions = segments.forward_positions(tokens.shape[1], segment_ids, positions)
    x = _constrain(self.embed(tokens))

    def run(block, h, s, p, values):  # returns the dict too: values added under remat leave it as outputs
      values = dict(values)
      return block(h, segment_ids=s, positions=p, layer_values=values), values

    # a ScannedGroup applies the remat policy to each layer itself
    step = run if self.scan or self.remat_policy is None else nnx.remat(run, policy=self.remat_policy)
    layer_values = {}
    for block in self.blocks:
      x, layer_values = step(block, x, segment_ids, positions, layer_values)
      x = _constrain(x)
    return self._logits(x)

  def init_cache(self, batch_size: int, max_len: int) -> list:
    return [block.init_cache(batch_size, max_len) for block in self.blocks]

  def decode(self, tokens: jax.Array, caches: list, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, list]:
    """tokens [B, T] fed after the `pos` tokens already in the caches -> logits [B, T, V], new caches.

    segment_ids [B, T]: each token's document; a token whose id differs from the previous token's
    starts a new document (None: all continue the current one). positions [B, T]: per-document
    positions (None: counted on from the caches). See the mixer contract in layers/registry.py.
    """
    x = self.embed(tokens)
    new, layer_values = [], {}
    for block, cache in zip(self.blocks, caches):
      x, cache = block.decode(x, cache, pos, segment_ids=segment_ids, positions=positions, layer_values=layer_values)
      new.append(cache)
    return self._logits(x), new


def generate(model: LM, prompt: jax.Array, max_new_tokens: int, *, segment_ids: jax.Array | None = None,
             temperature: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
  """Continue `prompt` [B, P] by `max_new_tokens` tokens; greedy when temperature == 0.

  segment_ids [B, P]: the documents of a packed prompt; the new tokens continue its last document,
  which sees nothing of the earlier ones. The prompt is fed through `decode` token by token
  (prefill), then tokens are sampled; returns [B, P + max_new_tokens]. Runs as one jitted lax.scan.
  """
  B, P = prompt.shape
  total = P + max_new_tokens
  rng = jax.random.key(0) if rng is None else rng
  if segment_ids is not None:
    segments.check_segment_ids(segment_ids, prompt.shape)
    segment_ids = jnp.concatenate([segment_ids, jnp.repeat(segment_ids[:, -1:], max_new_tokens, axis=1)], axis=1)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, prompt, segment_ids, rng):
    tokens = jnp.zeros((B, total), jnp.int32).at[:, :P].set(prompt)

    def step(carry, pos):
      tokens, caches, rng = carry
      # Built inside the step, so layers may record side outputs (MoE metrics); inference view (no
      # dropout, jitter or balancing counts).
      model = nnx.view(nnx.merge(graphdef, state), deterministic=True, raise_if_not_found=False)
      segment = None if segment_ids is None else jax.lax.dynamic_slice_in_dim(segment_ids, pos, 1, axis=1)
      logits, caches = model.decode(jax.lax.dynamic_slice_in_dim(tokens, pos, 1, axis=1), caches, pos,
                                    segment_ids=segment)
      rng, sub = jax.random.split(rng)
      logits = logits[:, 0]
      nxt = (jnp.argmax(logits, -1) if temperature == 0.0
             else jax.random.categorical(sub, logits / temperature, axis=-1)).astype(jnp.int32)
      keep = pos + 1 < P  # inside the prompt: keep the given token
      cur = jax.lax.dynamic_slice_in_dim(tokens, pos + 1, 1, axis=1)[:, 0]
      tokens = jax.lax.dynamic_update_slice_in_dim(tokens, jnp.where(keep, cur, nxt)[:, None], pos + 1, axis=1)
      return (tokens, caches, rng), None

    caches = nnx.merge(graphdef, state).init_cache(B, total)
    (tokens, _, _), _ = jax.lax.scan(step, (tokens, caches, rng), jnp.arange(total - 1))
    return tokens

  return run(state, prompt, segment_ids, rng)
