"""Name -> constructor for token mixers, feed-forwards, activations and norms.

A new layer is one file plus one line in `_ENTRIES`. Entries are import paths, loaded on first
use, so the registry imports nothing it does not need. Every constructor has the signature
`ctor(ctx: LayerContext, *, rngs: nnx.Rngs, **options)`; options come from the config
(`model.options.<name>.<key>`) and are checked against the signature before anything compiles.

Contracts (what models rely on):
  ffn:        module(x [..., D]) -> [..., D]. A feed-forward that reads neighbouring tokens (RWKV's
              token-shifted channel mix) follows the mixer contract below instead (segment_ids /
              positions, init_cache / decode); models call it like a mixer when it has `decode`.
  activation: callable(x [..., F]) -> [..., F] (plain function or NNX module).
  norm:       module(x [..., F]) -> [..., F].
  mixer (a token mixer; writing a recurrent one, start from the example in the docstring of
  layers/linear_attention/mixers/recurrent_mixer.py, whose base class does all of the below):
    __call__(x [B, T, D], *, segment_ids=None, positions=None) -> [B, T, D] in x's dtype.
      segment_ids [B, T] int32, the document of each token of a packed row: a change of id between
      neighbours starts a new document (layers/segments.py), and nothing crosses that start:
      attention masks other documents, recurrent states and short-conv windows restart from zero.
      positions [B, T] int32, each token's position in its document, feeds RoPE and anything else
      position-dependent; None: derived from segment_ids (`segments.forward_positions`), 0..T-1
      without them. Both None must give exactly the unpacked result.
    Causality: a mixer is causal (output t depends on tokens <= t only) unless its constructor takes
      a `causal` option and it is False (`is_causal`); models.lm refuses such a mixer by name.
    Decoding (optional; `models.lm.generate` needs it):
      init_cache(batch, max_len) -> a pytree of arrays with leading dim B (recurrent states in fp32)
        holding a "cursor" (`segments.init_cursor`): the document of the last token fed.
      decode(x [B, T, D], cache, pos, *, segment_ids=None, positions=None) -> (y [B, T, D], cache):
        the T tokens after the `pos` tokens already fed (pos: int32 scalar, the KV slot of x[:, 0]);
        T=1 is one step, T>1 a chunked prefill; equal to the forward over the whole stream.
        segment_ids [B, T]: a token whose id differs from the previous one's (the cursor's, for the
        first) starts a new document: state and conv buffers restart, KV slots of earlier documents
        drop out of sight; None: the tokens continue the cursor's document. positions None: counted
        on from the cursor. `segments.decode_documents` computes all of this from the cursor.
      Cache layouts: recurrent mixers {"state": [B, H, K, V] fp32, "conv": {conv name: [B, W-1, C]},
        "cursor"}; attention-like mixers `layers.attention.kv_cache` ({"k", "v": [B, S, N, H],
        "document", "position": [B, S] per slot, "cursor"}).
    Values shared across layers (optional): a mixer whose __call__ and decode take a `layer_values`
      keyword gets one dict per model forward (or decode) call, passed through the layers in order and
      empty at the start; it may read what an earlier layer put there and add per-token arrays of the
      tokens of this call ([B, T, ...]) for later layers. RWKV-7's value residual (every layer mixes in the
      first layer's values) is the user: the first publishes "v_first". Nothing in it is cached or state.
    tests/test_mixers.py checks every registered mixer (and token-mixing feed-forward) against this contract.
Layers report auxiliary losses / metrics through `layers.aux` (AuxLoss, LayerMetric).
"""

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from layers.context import LayerContext

KINDS = ("mixer", "ffn", "activation", "norm")

_ENTRIES: dict[str, dict[str, str]] = {
  "mixer": {
    "attention": "layers.attention.softmax:Attention",
    "linear_attention": "layers.linear_attention.mixers.linear_attention:LinearAttention",
    "retnet": "layers.linear_attention.mixers.retnet:RetNet",
    "gla": "layers.linear_attention.mixers.gla:GLA",
    "delta_net": "layers.linear_attention.mixers.delta_net:DeltaNet",
    "gated_delta_net": "layers.linear_attention.mixers.delta_net:GatedDeltaNet",
    "mamba2": "layers.linear_attention.mixers.mamba2:Mamba2",
    "norm_attention": "layers.linear_attention.mixers.norm_attention:NormAttention",
    "diag_attention": "layers.attention.diag_attention:DiagAttention",
    "lightning_attention": "layers.linear_attention.mixers.lightning_attention:LightningAttention",
    "nala": "layers.linear_attention.mixers.nala:NaLaAttention",
    "mom": "layers.moe.mom:MixtureOfMemories",
    "karat": "layers.kan.karat:KArAt",
    "kda": "layers.linear_attention.mixers.kda:KimiDeltaAttention",
    "gated_deltaproduct": "layers.linear_attention.mixers.gated_deltaproduct:GatedDeltaProduct",
    "rwkv7": "layers.linear_attention.mixers.rwkv7:RWKV7",
    "forgetting_attention": "layers.attention.forgetting:ForgettingAttention",
  },
  "ffn": {
    "mlp": "layers.feedforward:MLP",
    "glu": "layers.feedforward:GLU",
    "swiglu": "layers.feedforward:swiglu",
    "geglu": "layers.feedforward:geglu",
    "reglu": "layers.feedforward:reglu",
    "moe": "layers.moe.moe:MoE",
    "smear": "layers.moe.smear:SMEAR",
    "smoe_dropout": "layers.moe.smoe_dropout:SMoEDropout",
    "finedeep": "layers.moe.finedeep:Finedeep",
    "mohd": "layers.moe.mohd:MoHD",
    "kan": "layers.kan.feedforward:kan_ffn",
    "fourier_kan": "layers.kan.feedforward:fourier_kan_ffn",
    "gr_kan": "layers.kan.gr_kan:GRKANFeedForward",
    "af_kan": "layers.kan.af_kan:AFKANFeedForward",
    "rwkv7_channel_mix": "layers.linear_attention.mixers.rwkv7_channel_mix:RWKV7ChannelMix",
    "s_kan": "layers.kan.s_kan:SKANFeedForward",
  },
  "activation": {
    "relu": "layers.activations.fixed:relu",
    "leaky_relu": "layers.activations.fixed:leaky_relu",
    "gelu": "layers.activations.fixed:gelu",
    "gelu_tanh": "layers.activations.fixed:gelu_tanh",
    "silu": "layers.activations.fixed:silu",
    "swish": "layers.activations.fixed:silu",
    "relu2": "layers.activations.fixed:relu2",
    "tanh": "layers.activations.fixed:tanh",
    "sigmoid": "layers.activations.fixed:sigmoid",
    "identity": "layers.activations.fixed:identity",
    "rational": "layers.activations.rational:rational",
    "group_rational": "layers.activations.group_rational:group_rational",
    "polynorm": "layers.activations.polycom:polynorm",
    "polyrelu": "layers.activations.polycom:polyrelu",
    "swish_beta": "layers.activations.swish:swish_beta",
    "apa": "layers.activations.apa:APA",
    "aglu": "layers.activations.apa:AGLU",
    "crrelu": "layers.activations.crrelu:CRReLU",
    "smelu": "layers.activations.smelu:SmeLU",
    "generalized_smelu": "layers.activations.smelu:GeneralizedSmeLU",
    "helu": "layers.activations.helu:HeLU",
    "snake": "layers.activations.periodic:Snake",
    "sine": "layers.activations.periodic:Sine",
    "velu": "layers.activations.velu:VeLU",
  },
  "norm": {
    "rmsnorm": "layers.norms:rmsnorm",
    "layernorm": "layers.norms:layernorm",
    "evonorm_b0": "layers.evonorm:EvoNormB0",
    "evonorm_s0": "layers.evonorm:EvoNormS0",
  },
}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown layer kind {kind!r}; kinds are {KINDS}")


def import_named(table: dict[str, str], name: str, what: str) -> Any:
  """Import `table[name]` ("module:attr"); a ValueError with close matches if `name` is unknown.

  The one lazy name -> import-path lookup behind the layer, model and data-source registries.
  """
  if name not in table:
    close = difflib.get_close_matches(name, table, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(f"unknown {what} {name!r}.{hint} Registered {what}s: {sorted(table)}")
  module, attr = table[name].split(":")
  return getattr(importlib.import_module(module), attr)


def names(kind: str) -> list[str]:
  _check_kind(kind)
  return sorted(_ENTRIES[kind])


def lookup(kind: str, name: str) -> Callable[..., Any]:
  """The constructor registered as `name`; a clear error with close matches otherwise."""
  _check_kind(kind)
  return import_named(_ENTRIES[kind], name, kind)


def _parameters(kind: str, name: str):
  """The parameters of the constructor of `name`: a factory's, or a layer class's __init__ (NNX's
  metaclass gives the class itself a bare (*args, **kwargs) signature)."""
  ctor = lookup(kind, name)
  return inspect.signature(ctor.__init__ if inspect.isclass(ctor) else ctor).parameters


def check_options(kind: str, name: str, options: dict[str, Any]) -> None:
  """Raise if `options` holds a key the constructor of `name` does not accept."""
  params = _parameters(kind, name)
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "rngs"]
  for key in options:
    if key not in accepted:
      close = difflib.get_close_matches(key, accepted, n=3)
      hint = f" Did you mean {close}?" if close else ""
      raise ValueError(f"{kind} {name!r} has no option {key!r}.{hint} Its options: {accepted}")


def is_causal(name: str, options: dict[str, Any]) -> bool:
  """Whether mixer `name` built with `options` is causal: its `causal` option (given, or the
  constructor's default) when it takes one, else True (recurrences are causal by construction)."""
  params = _parameters("mixer", name)
  if "causal" not in params:
    return True
  return bool(options.get("causal", params["causal"].default))


def build(kind: str, name: str, ctx: LayerContext, *, rngs, **options) -> Any:
  """Construct the layer registered as `name`."""
  check_options(kind, name, options)
  return lookup(kind, name)(ctx, rngs=rngs, **options)
