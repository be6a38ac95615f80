"""Models by name: `build(model_config, rngs=...)` constructs `_MODELS[model_config.kind]`.

Constructor contract: `ctor(cfg, *, rngs) -> nnx.Module`, cfg the `config.model` ConfigDict;
the module maps `batch["inputs"]` to logits (classification / LM) or predictions (regression).
"""

from flax import nnx

from layers.registry import import_named

_MODELS = {
  "lm": "models.lm:LM",
  "vit": "models.vit:ViT",
  "mlp": "models.mlp:MLP",
  "convnet": "models.mlp:ConvNet",
}


def names() -> list[str]:
  return sorted(_MODELS)


def lookup(kind: str):
  return import_named(_MODELS, kind, "model kind")


def build(cfg, *, rngs: nnx.Rngs) -> nnx.Module:
  return lookup(cfg.kind)(cfg, rngs=rngs)
