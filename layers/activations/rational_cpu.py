"""XLA:CPU kernels for the rational op's literal form (`rational_cpu.cc`), built on first use.

XLA:CPU runs the rational backward as separate loops (dL/dx, then the coefficient power sums in a variadic
reduce it does not vectorise); the kernel makes one vectorised, multithreaded pass for each direction. It is
compiled once per machine with the system C++ compiler ($CXX, else c++ / g++ / clang++) against jaxlib's FFI
headers, into $ABLAX_KERNEL_CACHE (default ~/.cache/ablax/kernels) under a name keyed by the source, the
jaxlib version, the compiler and the CPU (so nodes of different CPUs sharing a home directory each get their
own build). Without a compiler, or if the build fails, `enabled()` warns once and the op keeps its XLA form:
the same results, in about 1.5x the time. ABLAX_CPU_KERNELS=0 turns the kernels off.
"""

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("rational_cpu.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi")
_TARGETS = {"ablax_rational_forward": "AblaxRationalForward", "ablax_rational_backward": "AblaxRationalBackward"}


def _cpu_id() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
  except OSError:
    return platform.processor() or platform.machine()


def _build() -> Path:
  """The compiled library's path, compiling it if this machine has no build of the current source yet."""
  cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
  key = hashlib.sha256("\0".join(
      [SOURCE.read_text(), jax.lib.__version__, version, _cpu_id(), *_FLAGS]).encode()).hexdigest()[:16]
  cache = Path(os.environ.get("ABLAX_KERNEL_CACHE", Path.home() / ".cache" / "ablax" / "kernels"))
  lib = cache / f"rational_cpu_{key}.so"
  if lib.exists():
    return lib
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:  # concurrent builds each write their own file
    out = Path(tmp) / lib.name
    cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(out, lib)
  return lib


def enabled() -> bool:
  """Whether ops traced now use the kernels: not switched off (ABLAX_CPU_KERNELS=0, read at trace time, so a
  benchmark or test can trace both forms in one process) and built for this machine (built on the first call)."""
  return os.environ.get("ABLAX_CPU_KERNELS", "1") != "0" and _load()


@functools.cache
def _load() -> bool:
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    warnings.warn(f"rational activation CPU kernel unavailable, using the XLA form (~1.5x slower): {e}",
                  stacklevel=2)
    return False
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return True


def group_layout(x_shape: tuple[int, ...], coeff_shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(G, inner) when coefficients of shape S = coeff_shape give element i of x the group (i // inner) % G: S's
  non-unit axes (aligned to x's trailing axes) must be contiguous and equal to x's. None otherwise."""
  if len(coeff_shape) > len(x_shape):
    return None
  s = (1,) * (len(x_shape) - len(coeff_shape)) + tuple(coeff_shape)
  axes = [i for i, k in enumerate(s) if k != 1]
  if not axes:
    return 1, max(math.prod(x_shape), 1)
  lo, hi = axes[0], axes[-1] + 1
  if any(s[i] != x_shape[i] for i in range(lo, hi)):
    return None
  return math.prod(x_shape[lo:hi]), math.prod(x_shape[hi:])


def _attrs(inner: int, abs_v: bool, abs_h: bool, q0: float, j0: int) -> dict:
  return dict(inner=np.int64(inner), abs_v=np.int32(abs_v), abs_h=np.int32(abs_h), q0=np.float32(q0),
              j0=np.int32(j0))


def forward(x: jax.Array, a: jax.Array, beta: jax.Array, inner: int, abs_v: bool, abs_h: bool, q0: float, j0: int,
            limit: float) -> tuple[jax.Array, jax.Array]:
  """(F(x), whether some |x| > limit or is NaN); fp32 x [...], a [m+1, G], beta [n+1, G] (β_0 first)."""
  f, far = jax.ffi.ffi_call(
      "ablax_rational_forward",
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)),
      vmap_method="sequential")(x, a, beta, limit=np.float32(limit), **_attrs(inner, abs_v, abs_h, q0, j0))
  return f, far != 0


def backward(x: jax.Array, g: jax.Array, f: jax.Array, a: jax.Array, beta: jax.Array, inner: int, abs_v: bool,
             abs_h: bool, q0: float, j0: int) -> tuple[jax.Array, jax.Array]:
  """(dL/dx [...], Σ of every coefficient's gradient term [m+1 + n+1-j0, G]: a's, then β_j0..β_n's)."""
  terms = a.shape[0] + beta.shape[0] - j0
  return jax.ffi.ffi_call(
      "ablax_rational_backward",
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((terms, a.shape[1]), jnp.float32)),
      vmap_method="sequential")(x, g, f, a, beta, **_attrs(inner, abs_v, abs_h, q0, j0))
