"""Models by name: `build(model_config, rngs=...)` constructs `_MODELS[model_config.kind]`; `load(workdir)`
rebuilds a trained one from its run directory.

Constructor contract: `ctor(cfg, *, rngs) -> nnx.Module`, cfg the `config.model` ConfigDict;
the module maps `batch["inputs"]` to logits (classification / LM) or predictions (regression).
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
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


def input_spec(cfg, batch_size: int, seq_len: int) -> jax.ShapeDtypeStruct:
  """The inputs a model of config `cfg` takes for `batch_size` examples: tokens [B, seq_len] int32 (lm),
  images / signals [B, *spatial, C] (vit, convnet) or features [B, in_features] (mlp), fp32."""
  if cfg.kind == "lm":
    return jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  if cfg.kind == "vit":
    return jax.ShapeDtypeStruct((batch_size, *cfg.image_size, cfg.in_channels), jnp.float32)
  if cfg.kind == "convnet":
    return jax.ShapeDtypeStruct((batch_size, *cfg.spatial, cfg.in_channels), jnp.float32)
  if cfg.kind == "mlp":
    return jax.ShapeDtypeStruct((batch_size, cfg.in_features), jnp.float32)
  raise ValueError(f"no input spec for model kind {cfg.kind!r}; known: {names()}")


def load(workdir: str, *, step: int | None = None, sharding: jax.sharding.Sharding | None = None) -> nnx.Module:
  """The model a run in `workdir` trained, with the parameters (and other model variables) of its latest
  checkpoint, or of `step`; no optimizer state is read.

  A run directory holds config.json and checkpoints/<step>/{state, meta} (orbax): `state` is
  {"params", "rest", "opt_state", ...}, `meta` the model config in force at that step (grids of
  extended KAN layers). Arrays land on `sharding` (default: the first device).

    model = models.load("runs/gla")
    logits = model(tokens)  # [B, T] -> [B, T, vocab]
  """
  import orbax.checkpoint as ocp

  root = epath.Path(workdir)
  if not (root / "config.json").exists():
    raise FileNotFoundError(f"{workdir} holds no config.json; is it a run directory (python -m train --workdir)?")
  manager = ocp.CheckpointManager(root / "checkpoints", options=ocp.CheckpointManagerOptions(
                                    read_only=True, create=False, save_interval_steps=0),
                                  item_handlers={"meta": ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no finished checkpoint yet")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  model_cfg = meta.get("model") or json.loads((root / "config.json").read_text())["model"]
  abstract = nnx.eval_shape(lambda: build(ml_collections.ConfigDict(model_cfg), rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding),
                        {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)})
  state = ocp.PyTreeCheckpointer().restore(
    root / "checkpoints" / str(step) / "state",
    args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True))
  manager.close()
  return nnx.merge(graphdef, state["params"], state["rest"])
