"""8 fake CPU devices for sharding tests; must run before JAX touches a backend.

Tests run on the CPU unless JAX_PLATFORMS says otherwise (e.g. JAX_PLATFORMS=cuda to run the op
tests on a GPU; the sharding tests need the 8 CPU devices).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)
