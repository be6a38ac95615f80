"""Name -> constructor for token mixers, feed-forwards, activations and norms.

A new layer is one file plus one line in `_ENTRIES`. Entries are import paths, loaded on first
use, so the registry imports nothing it does not need. Every constructor has the signature
`ctor(ctx: LayerContext, *, rngs: nnx.Rngs, **options)`; options come from the config
(`model.options.<name>.<key>`) and are checked against the signature before anything compiles.

Contracts (what models rely on):
  mixer:      module(x [B,T,D]) -> [B,T,D]; optional `init_cache(batch, max_len)` and
              `decode(x [B,1,D], cache, pos) -> (y, cache)` for generation.
  ffn:        module(x [..., D]) -> [..., D].
  activation: callable(x [..., F]) -> [..., F] (plain function or NNX module).
  norm:       module(x [..., F]) -> [..., F].
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
    "attention": "layers.attention.softmax:attention",
    "linear_attention": "layers.linear_attention.mixers.linear_attention:linear_attention",
    "retnet": "layers.linear_attention.mixers.retnet:retnet",
    "gla": "layers.linear_attention.mixers.gla:gla_mixer",
    "delta_net": "layers.linear_attention.mixers.delta_net:delta_net",
    "gated_delta_net": "layers.linear_attention.mixers.delta_net:gated_delta_net",
    "mamba2": "layers.linear_attention.mixers.mamba2:mamba2",
    "mom": "layers.moe.mom:mom",
    "karat": "layers.kan.karat:karat",
  },
  "ffn": {
    "mlp": "layers.feedforward:mlp",
    "glu": "layers.feedforward:glu",
    "swiglu": "layers.feedforward:swiglu",
    "geglu": "layers.feedforward:geglu",
    "reglu": "layers.feedforward:reglu",
    "moe": "layers.moe.moe:moe",
    "smear": "layers.moe.smear:smear",
    "kan": "layers.kan.feedforward:kan_ffn",
    "fourier_kan": "layers.kan.feedforward:fourier_kan_ffn",
    "gr_kan": "layers.kan.gr_kan:gr_kan",
    "af_kan": "layers.kan.af_kan:AFKANFeedForward",
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


def check_options(kind: str, name: str, options: dict[str, Any]) -> None:
  """Raise if `options` holds a key the constructor of `name` does not accept."""
  ctor = lookup(kind, name)
  params = inspect.signature(ctor.__init__ if inspect.isclass(ctor) else ctor).parameters  # NNX metaclasses hide it
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "rngs"]
  for key in options:
    if key not in accepted:
      close = difflib.get_close_matches(key, accepted, n=3)
      hint = f" Did you mean {close}?" if close else ""
      raise ValueError(f"{kind} {name!r} has no option {key!r}.{hint} Its options: {accepted}")


def build(kind: str, name: str, ctx: LayerContext, *, rngs, **options) -> Any:
  """Construct the layer registered as `name`."""
  check_options(kind, name, options)
  return lookup(kind, name)(ctx, rngs=rngs, **options)
