"""Activations: fixed (relu, gelu, silu, relu2, ...) and learnable; `functional` holds the pure math."""
