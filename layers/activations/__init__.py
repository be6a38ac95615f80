"""Activations: fixed (relu, gelu, silu, relu2, ...) and learnable (rational / PAU, group rational,
PolyNorm / PolyReLU, Swish-β). `functional` holds the pure math, `fit` the least-squares rational
presets, `plot` the learned-shape plot of a trained run."""
