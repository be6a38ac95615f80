"""Building blocks: each a pure-function core plus a thin Flax NNX module, found by name in `registry`."""
