"""Vision Transformer (ViT / DeiT) whose blocks come from the layer registry, like the LM's.

inputs [B, *spatial, C] channels-last (1-D signals [B, L, C] or images [B, H, W, C]) -> patches of
`patch_size` per spatial dim -> Linear patch embedding (+ cls token) + learned position embedding ->
pre-norm blocks from `model.blocks` (e.g. "(softmax, mlp) * 12", "(karat, gr_kan) * 12") ->
final norm -> cls token or mean pool -> linear head -> logits [B, n_classes] (fp32).

`VIT_SIZES` holds the DeiT-T/S/B shapes; KAT-T/S/B are the same shapes with the GR-KAN feed-forward
(`vit_model_config("kat_s")`). Universal-mode KArAt layers share one operator (tied at build time).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from layers import registry
from layers.core import Linear, make_param
from layers.kan.karat import tie_universal_operators
from layers.sharding import constrain
from models.block_pattern import parse
from models.lm import ACTIVATION, Block, check_blocks, layer_context, remat_policy

# d_model, n_layers, n_heads, d_ff (MLP hidden = 4 d_model), as in DeiT / KAT.
VIT_SIZES = {
  "t": dict(d_model=192, n_layers=12, n_heads=3, d_ff=768),
  "s": dict(d_model=384, n_layers=12, n_heads=6, d_ff=1536),
  "b": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
}
FAMILY_FFN = {"deit": "mlp", "kat": "gr_kan"}
ATTENTION = {  # label -> registry layer and its options (bidirectional)
  "softmax": dict(layer="attention", causal=False, rope_theta=None),
  "karat": dict(layer="karat", operator="fourier_kan", mode="blockwise"),
  "karat_universal": dict(layer="karat", operator="fourier_kan", mode="universal"),
  "nala": dict(layer="nala", causal=False),
}


def vit_model_config(preset: str = "deit_t", *, image_size=(224, 224), in_channels: int = 3,
                     patch_size: int = 16, n_classes: int = 1000,
                     attention: str = "softmax") -> ml_collections.ConfigDict:
  """`config.model` for a preset `deit_t|s|b` or `kat_t|s|b` (GELU MLP vs GR-KAN feed-forward).

  attention: "softmax" (bidirectional softmax attention, no RoPE: the ViT adds position
  embeddings), "karat" (Fourier-KArAt, blockwise), "karat_universal" or "nala" (bidirectional
  norm-aware linear attention, NaLaFormer's kernel); all are labels in `model.options`, so switching is a
  change of `model.blocks`.
  """
  family, _, size = preset.partition("_")
  if family not in FAMILY_FFN or size not in VIT_SIZES:
    known = [f"{f}_{s}" for f in FAMILY_FFN for s in VIT_SIZES]
    raise ValueError(f"unknown ViT preset {preset!r}; known: {known}")
  if attention not in ATTENTION:
    raise ValueError(f"unknown ViT attention {attention!r}; known: {sorted(ATTENTION)}")
  s = VIT_SIZES[size]
  n_tokens = math.prod(d // patch_size for d in image_size) + 1
  options = ml_collections.ConfigDict({
    name: {**opts, **({"max_len": n_tokens} if opts["layer"] == "karat" else {})}
    for name, opts in ATTENTION.items()})
  return ml_collections.ConfigDict(dict(
    kind="vit", d_model=s["d_model"], n_heads=s["n_heads"], n_kv_heads=0, head_dim=0, d_ff=s["d_ff"],
    activation="gelu", norm="layernorm", blocks=f"({attention}, {FAMILY_FFN[family]}) * {s['n_layers']}",
    options=options, image_size=tuple(image_size), in_channels=in_channels, patch_size=patch_size,
    n_classes=n_classes, pool="cls", dtype="float32", param_dtype="float32", remat="none",
  ))


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, *spatial, C] -> [B, n_patches, patch**ndim * C] (row-major over patches)."""
  B, *spatial, C = x.shape
  if any(s % patch for s in spatial):
    raise ValueError(f"spatial shape {tuple(spatial)} is not divisible by patch_size={patch}")
  grid = [s // patch for s in spatial]
  x = x.reshape(B, *[d for g in grid for d in (g, patch)], C)
  nd = len(spatial)
  order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]  # grid axes first, then patch axes
  return x.transpose(order).reshape(B, math.prod(grid), patch**nd * C)


class ViT(nnx.Module):
  """inputs [B, *spatial, C] -> logits [B, n_classes] (fp32)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    check_blocks(cfg)
    if cfg.pool not in ("cls", "mean"):
      raise ValueError(f"model.pool must be 'cls' or 'mean', got {cfg.pool!r}")
    pattern = parse(cfg.blocks)
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.patch, self.pool, self.dtype = cfg.patch_size, cfg.pool, dtype
    n_patches = math.prod(s // cfg.patch_size for s in cfg.image_size)
    patch_dim = cfg.patch_size ** len(cfg.image_size) * cfg.in_channels
    self.embed = Linear(patch_dim, cfg.d_model, axes=(None, "embed"), use_bias=True, dtype=dtype,
                        param_dtype=param_dtype, rngs=rngs)
    init = nnx.initializers.truncated_normal(0.02)
    self.cls = (make_param(init, rngs.params(), (1, 1, cfg.d_model), param_dtype, (None, None, "embed"),
                           optim_group="no_decay") if cfg.pool == "cls" else None)
    n_tokens = n_patches + (cfg.pool == "cls")
    self.pos = make_param(init, rngs.params(), (n_tokens, cfg.d_model), param_dtype, (None, "embed"),
                          optim_group="no_decay")
    self.blocks = nnx.List([Block(cfg, mixer, ffn, layer_context(cfg, i, len(pattern)), rngs=rngs)
                            for i, (mixer, ffn) in enumerate(pattern)])
    top = layer_context(cfg, len(pattern), len(pattern))
    self.final_norm = registry.build("norm", cfg.norm, top, rngs=rngs)
    self.head = Linear(cfg.d_model, cfg.n_classes, axes=("embed", None), use_bias=True, dtype=dtype,
                       param_dtype=param_dtype, kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.remat_policy = remat_policy(cfg.get("remat", "none"))
    tie_universal_operators(self)

  def __call__(self, inputs: jax.Array) -> jax.Array:  # [B, *spatial, C] -> [B, n_classes]
    x = self.embed(patchify(inputs.astype(self.dtype), self.patch))  # [B, N, D]
    if self.cls is not None:
      cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.pos[...].astype(x.dtype)
    for block in self.blocks:
      if self.remat_policy is None:
        x = block(x)
      else:
        x = nnx.remat(lambda b, h: b(h), policy=self.remat_policy)(block, x)
      x = constrain(x, ACTIVATION)
    x = self.final_norm(x)
    x = x[:, 0] if self.cls is not None else jnp.mean(x, axis=1)
    return self.head(x).astype(jnp.float32)
