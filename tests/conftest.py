"""8 fake CPU devices for sharding tests; must run before JAX touches a backend."""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
