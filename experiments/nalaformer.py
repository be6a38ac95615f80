"""NaLaFormer (Meng et al. 2025, "NaLaFormer: Norm-Aware Linear Attention for Transformer Models", arXiv
2506.21137): a ViT whose attention is norm-aware linear attention (bidirectional NaLa) vs the softmax ViT.

NaLa (layers/linear_attention/mixers/nala.py) puts the query norm into the kernel's exponent,
phi_q(q) = [relu(q/|q|)^p, relu(-q/|q|)^p] with p = 3 (1/2 + tanh |q|), and keys phi_k(k) = [relu(k)^3,
relu(-k)^3], normalised linear attention over all tokens, LayerNorm * SiLU gate. The paper's backbones
are hierarchical (four stages with patch merging, conv position encodings, softmax blocks in the last
stages; the authors' NALAFORMER_T/S/B/L); ablax's ViT is the plain DeiT stack, so the scale runs below
are DeiT shapes with NaLa in every block: an analogue of the paper's models, not a reproduction.
Variants (`attention=`): nala | softmax (and the other labels of models.vit.ATTENTION).

Paper scale (ImageNet-1K prepared for TFDS under data_dir; GPU/TPU), the DeiT recipe of the authors'
pretrain.sh (AdamW lr 1e-3 at batch 1024, wd 0.05, cosine, 5 warm-up epochs, 300 epochs, label smoothing
0.1, mixup / cutmix, random-resized crop, flips, random erasing; its drop-path 0.05, model EMA and
RandAugment are not implemented here):
  python -m train --config experiments/nalaformer.py:model=deit_t --workdir runs/nala_deit_t
  python -m train --config experiments/nalaformer.py:model=deit_t,attention=softmax --workdir runs/deit_t
Local (2 CPU cores; a 4-layer d=64 ViT with 4 heads on MNIST-1D, 600 steps, no augmentation):
  python -m train --config experiments/nalaformer.py:local --workdir runs/nala_local
  python -m train.sweep --config experiments/nalaformer.py:local --parallel 2   # nala vs softmax x 2 seeds
  python -m train.report runs/nalaformer-local
The causal form is in the MQAR study (experiments/mqar_study.py, mixer=nala).
Expect (paper / the authors' README, ImageNet-1K top-1 from scratch): NaLaFormer-XT / T / S / B / L
79.1 / 82.6 / 84.3 / 85.2 / 85.7 at 8 / 15 / 26 / 52 / 95M parameters, above the linear-attention
backbones they compare with (the v1 abstract: gains of up to 4.2% on vision and language tasks).
Measured locally (the sweep above, seeds 0 and 1; eval accuracy on 8 x 64 MNIST-1D test examples after 600
steps, mean ± std over seeds; 10 min wall for the 4 runs on 2 CPU cores shared with other jobs):
  nala 0.814 ± 0.001 (218K parameters)   softmax 0.813 ± 0.033 (199K)   (eval loss 0.614 ± 0.002 vs 0.601 ± 0.049)
Equal within the seed spread at 11 tokens, where nothing favours linear attention; at this length the two
chunk passes of the bidirectional form make a NaLa training step ~2.3x slower than softmax's on this CPU
(tokens/s of the runs, under load). NaLa's causal form on recall: the MQAR study.
"""

import ml_collections

from experiments import common
from models.vit import ATTENTION, vit_model_config

IMAGENET_STEPS = 300 * 1_281_167 // 1024


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, model="deit_t", attention="nala", data="mnist1d", local=False)
  if arg.attention not in ATTENTION:
    raise ValueError(f"attention must be one of {sorted(ATTENTION)}, got {arg.attention!r}")
  c = common.base_config()
  if arg.local:
    image_size, patch = {"mnist1d": ((40,), 4), "digits": ((8, 8), 2)}[arg.data]
    c.model = vit_model_config(arg.model, image_size=image_size, in_channels=1, patch_size=patch, n_classes=10,
                               attention=arg.attention)
    c.model.update(dict(d_model=64, n_heads=4, d_ff=256, blocks=c.model.blocks.replace("* 12", "* 4")))
    c.data.update(dict(name=arg.data, batch_size=64, train_split="train", eval_split="test"))
    c.optim.update(common.adamw(lr=1e-3, warmup=50, schedule="cosine", clip=1.0, weight_decay=0.05, b2=0.999))
    steps, eval_steps = 600, 8
  else:
    c.model = vit_model_config(arg.model, image_size=(224, 224), in_channels=3, patch_size=16, n_classes=1000,
                               attention=arg.attention)
    c.data.update(dict(name="tfds_images", tfds_name="imagenet2012", batch_size=1024, train_split="train",
                       eval_split="validation", image_size=224))
    c.optim.update(common.adamw(lr=1e-3, warmup=5 * IMAGENET_STEPS // 300, schedule="cosine", clip=0.0,
                                weight_decay=0.05, b2=0.999))
    c.data.augment.update(common.deit_augment(num_classes=1000, image_size=224, resized_crop=True))
    c.model.dtype = "bfloat16"
    steps, eval_steps = IMAGENET_STEPS, 49
  c.train.update(dict(loss="xent", steps=steps, log_every=max(steps // 60, 1), eval_every=max(steps // 6, 1),
                      eval_steps=eval_steps, ckpt_every=max(steps // 6, 1)))
  c.train.label_smoothing = 0.1
  return c


def sweep(add, arg: str | None = None) -> None:
  n_layers = 4 if "local" in (arg or "") else 12
  for attention in ("nala", "softmax"):
    for seed in (0, 1):
      add(**{"model.blocks": f"({attention}, mlp) * {n_layers}", "seed": seed})
