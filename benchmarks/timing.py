"""The benchmarks' one timing harness: warm-up, then wall and process-CPU seconds per call, several rows
timed in turns so that a change of load on a shared machine hits all of them alike.

    runs = {"gelu": lambda: step(params, x), "rational": lambda: other(params, x)}
    times = interleaved(runs, repeats=5)
    ratio = statistics.median(times["rational"].wall) / statistics.median(times["gelu"].wall)
"""

import dataclasses
import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax


@dataclasses.dataclass
class Times:
  """Seconds of each timed call: wall clock, and this process's CPU time (the steadier one under load)."""

  wall: list[float] = dataclasses.field(default_factory=list)
  cpu: list[float] = dataclasses.field(default_factory=list)

  @property
  def median(self) -> float:
    return statistics.median(self.wall)

  @property
  def median_cpu(self) -> float:
    return statistics.median(self.cpu)


def interleaved(runs: dict[Hashable, Callable[[], Any]], repeats: int, *, warmup: bool = True) -> dict[Hashable, Times]:
  """Each run called once to warm up (unless `warmup` is False: the caller already ran it), then `repeats`
  rounds of one call of each, waiting for its outputs (jax.block_until_ready)."""
  if warmup:
    for run in runs.values():
      jax.block_until_ready(run())
  times = {key: Times() for key in runs}
  for _ in range(repeats):
    for key, run in runs.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      jax.block_until_ready(run())
      times[key].wall.append(time.perf_counter() - start)
      times[key].cpu.append(time.process_time() - cpu_start)
  return times


def median_seconds(fn: Callable, args: tuple, repeats: int) -> tuple[float, float]:
  """(wall, process CPU) median seconds of fn(*args) after a warm-up call."""
  t = interleaved({0: lambda: fn(*args)}, repeats)[0]
  return t.median, t.median_cpu


def temp_mib(compiled) -> float:
  """XLA's temporary-buffer estimate of a compiled function, MiB (0 where the backend gives none)."""
  mem = compiled.memory_analysis()
  return (getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0) / 2**20
