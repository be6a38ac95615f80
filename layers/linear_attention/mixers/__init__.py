"""Linear-attention token-mixer layers (NNX modules) and the parts they share (RecurrentMixer, short
conv, decay gate, head norm, feature maps). Models find them by name in `layers/registry.py`."""
