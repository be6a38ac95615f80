"""8 fake CPU devices for sharding tests; must run before JAX touches a backend.

Tests run on the CPU unless JAX_PLATFORMS says otherwise (e.g. JAX_PLATFORMS=cuda to run the op
tests on a GPU; the sharding tests need the 8 CPU devices).
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' shapes are tiny, so their time is XLA:CPU compiling (thousands of small programs, in this process
# and in the training runs it starts, which inherit the environment). LLVM at -O0 compiles them about twice as
# fast (measured: 247 -> 137 s of CPU for 30 mixer / KAN tests); results are IEEE either way (XLA:CPU's fast
# math is off), so every tolerance stands. Benchmarks never run under this file.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
  """A 200-piece SentencePiece model trained on this repo's training loop source (a stand-in for a
  corpus tokenizer, e.g. in paper-scale configs, which read text through data.spm_model)."""
  import sentencepiece

  prefix = tmp_path_factory.mktemp("spm") / "tiny"
  lines = open(os.path.join(os.path.dirname(__file__), "..", "train", "loop.py")).read().splitlines()
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=200,
                                           model_type="bpe", minloglevel=2)
  return f"{prefix}.model"


@pytest.fixture
def cpu_kernel():
  """require(enabled): a C++ CPU kernel (`layers.cpu_kernels`) is built and on, given its module's `enabled`.
  Skips only where it cannot be (no C++ compiler, or ABLAX_CPU_KERNELS=0 in the environment); fails where a
  compiler exists but the build does not."""
  from layers import cpu_kernels

  def require(enabled) -> None:
    if os.environ.get("ABLAX_CPU_KERNELS") == "0":
      pytest.skip("ABLAX_CPU_KERNELS=0 in this environment: the C++ kernels are switched off")
    if cpu_kernels.compiler() is None:
      pytest.skip("no C++ compiler on this machine: the C++ kernels cannot be built (their XLA forms are tested)")
    assert enabled(), "a C++ compiler is present but the kernel did not build (see the warning)"

  return require
