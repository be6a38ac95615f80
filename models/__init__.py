"""Models by name: `build(model_config, rngs=...)` constructs `_MODELS[model_config.kind]`.

Constructor contract: `ctor(cfg, *, rngs) -> nnx.Module`, cfg the `config.model` ConfigDict;
the module maps `batch["inputs"]` to logits (classification / LM) or predictions (regression).
"""

import difflib
import importlib

from flax import nnx

_MODELS = {
  "lm": "models.lm:LM",
  "vit": "models.vit:ViT",
  "mlp": "models.mlp:MLP",
  "convnet": "models.mlp:ConvNet",
}


def names() -> list[str]:
  return sorted(_MODELS)


def lookup(kind: str):
  if kind not in _MODELS:
    close = difflib.get_close_matches(kind, _MODELS, n=3)
    raise ValueError(f"unknown model kind {kind!r}" + (f"; did you mean {close}?" if close else "")
                     + f" Known: {names()}")
  module, attr = _MODELS[kind].split(":")
  return getattr(importlib.import_module(module), attr)


def build(cfg, *, rngs: nnx.Rngs) -> nnx.Module:
  return lookup(cfg.kind)(cfg, rngs=rngs)
