"""C++ kernels for XLA:CPU (jax.ffi), compiled on first use: where XLA:CPU's code for an op is far from the
machine (a variadic reduce it does not vectorise; a recurrence whose state fits in L1 but that XLA runs as a
loop of small ops), a kernel of our own does one vectorised, multithreaded pass.

A kernel is one C++ source beside the op that uses it (with `parallel.h` from this directory). `load(source,
targets)` compiles it once per machine with the system C++ compiler ($CXX, else c++ / g++ / clang++) against
jaxlib's FFI headers into $ABLAX_KERNEL_CACHE (default ~/.cache/ablax/kernels), under a name keyed by the
sources, the jaxlib version, the compiler and the CPU (nodes of different CPUs sharing a home directory each get
their own build), and registers its handlers with XLA:CPU. Without a compiler, or if the build fails, it warns
once and returns False, and the op keeps its XLA form (same results, slower). ABLAX_CPU_KERNELS=0 turns every
kernel off; it is read when an op is traced, so a benchmark or test can trace both forms in one process.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax

HEADERS = Path(__file__).parent
_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi")


def enabled() -> bool:
  """Whether ops traced now may use their CPU kernels: a CPU backend, and not switched off."""
  return os.environ.get("ABLAX_CPU_KERNELS", "1") != "0" and jax.default_backend() == "cpu"


def compiler() -> str | None:
  return os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _cpu_id() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
  except OSError:
    return platform.processor() or platform.machine()


def build(source: Path) -> Path:
  """The compiled library of `source`, compiling it if this machine has no build of the current sources yet."""
  cxx = compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
  texts = [p.read_text() for p in (source, *sorted(HEADERS.glob("*.h")))]
  key = hashlib.sha256("\0".join([*texts, jax.lib.__version__, version, _cpu_id(), *_FLAGS]).encode())
  cache = Path(os.environ.get("ABLAX_KERNEL_CACHE", Path.home() / ".cache" / "ablax" / "kernels"))
  lib = cache / f"{source.stem}_{key.hexdigest()[:16]}.so"
  if lib.exists():
    return lib
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:  # concurrent builds each write their own file
    out = Path(tmp) / lib.name
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{HEADERS}", str(source), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(out, lib)
  return lib


@functools.cache
def load(source: Path, targets: tuple[tuple[str, str], ...]) -> bool:
  """Build `source` and register its (FFI target name, exported symbol) handlers for XLA:CPU; False (with a
  warning) if it cannot be built here."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build(source)))
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    warnings.warn(f"CPU kernel {source.name} unavailable, using the XLA form: {e}", stacklevel=2)
    return False
  for target, symbol in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return True
