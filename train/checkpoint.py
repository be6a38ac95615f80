"""Orbax checkpoints of a run: train state, per-process data-iterator state and metadata.

Async saves every N steps, keep the last K, onto any mesh on restore (the target shardings decide the
layout). Orbax writes to a temporary directory and renames it when complete, so a kill mid-save never
leaves a checkpoint that looks finished. Each save records a checksum of every state array in its
metadata, since a damaged data file can decode without error.

`restore_newest` takes the newest checkpoint that restores and verifies: a checkpoint that cannot be
read (missing or damaged files, bad JSON) or whose arrays do not match their checksums is skipped with
one line naming the file and the reason, and moved to DIR/skipped_checkpoints/ (never deleted) so that
the run can save that step again.
"""

import contextlib
import datetime
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from train import paths
from train.config import ConfigError

SKIPPED = "skipped_checkpoints"


class IteratorState:
  """A frozen snapshot of a data iterator's state, in the shape grain's checkpoint handler wants.

  Snapshotting at save time matters with async saves: the live iterator moves on meanwhile.
  """

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:
    """Required by grain's handler; a snapshot has nothing to prefetch."""


class CorruptCheckpoint(Exception):
  """A checkpoint that cannot be restored or does not verify; `str` names the file and the reason."""


class NoRestorableCheckpoint(RuntimeError):
  """The workdir holds checkpoints but none of them restores."""


def versions() -> dict[str, str]:
  import flax
  import optax

  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__ if hasattr(ocp, "__version__") else "", "grain": grain.__version__}


def _path_name(path) -> str:
  """'params/blocks/0/mixer/q/kernel' for a key path, whatever container types it runs through."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _leaf_hash(x: jax.Array) -> jax.Array:
  """A position-weighted sum of the array's bits mod 2^32: any single flipped bit changes it."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}")).astype(jnp.uint32)
  weights = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape) * 2 + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32)


_hashes = jax.jit(lambda state: jnp.stack([_leaf_hash(x) for x in jax.tree.leaves(state)]))


def checksums(state: Any) -> dict[str, int]:
  """Array path -> checksum, for every array of `state` (computed where the arrays live)."""
  paths = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  return dict(zip(paths, (int(h) for h in jax.device_get(_hashes(state)))))


def _root_cause(e: BaseException) -> str:
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _reading(path):
  """Failures while reading `path` become one CorruptCheckpoint line. What the reader libraries report
  meanwhile (tracebacks from finalizers, and from I/O threads that finish reads after the failure, printed
  or sent to sys.unraisablehook) is swallowed until it has been quiet for a moment."""
  sys.stderr.flush()
  saved_fd, saved_hook, swallowed = os.dup(2), sys.unraisablehook, []
  error = None
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    sys.unraisablehook = swallowed.append
    try:
      yield
    except Exception as e:  # any failure to read a checkpoint file is a reason to skip that checkpoint
      error = f"{path}: {_root_cause(e)}"
    finally:
      if error:
        _drain(lambda: (os.fstat(sink.fileno()).st_size, len(swallowed)))
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
      sys.unraisablehook = saved_hook
  if error:
    raise CorruptCheckpoint(error)


def _drain(activity: Callable[[], Any], quiet: float = 0.3, limit: float = 5.0) -> None:
  """Wait (at most `limit` s) until `activity()` has not changed for `quiet` s, collecting garbage so that
  finalizers report now."""
  deadline, last = time.monotonic() + limit, None
  while time.monotonic() < deadline:
    gc.collect()
    sys.stderr.flush()
    now = activity()
    if now == last:
      return
    last = now
    time.sleep(quiet)


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process of the run."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


class Checkpointer:
  def __init__(self, directory, *, every: int, keep: int, async_save: bool = True):
    self.directory = paths.path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
      self.directory, options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> bool:
    """Save if `step` is on the interval (or `force`) and not saved already; returns whether a save started."""
    if step in self.manager.all_steps() or not (force or self.manager.should_save(step)):
      return False
    return self.manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(IteratorState(data_state)),
      meta=ocp.args.JsonSave({**meta, "step": step, "versions": versions(), "checksums": checksums(state)}),
    ), force=force)

  def _restore(self, step: int, **items) -> Any:
    return self.manager.restore(step, args=ocp.args.Composite(**items))

  def read_meta(self, step: int) -> dict:
    """The run metadata saved with checkpoint `step` (config, step, versions, checksums)."""
    with _reading(self.directory / str(step) / "meta" / "metadata"):
      meta = self._restore(step, meta=ocp.args.JsonRestore()).meta
      if not isinstance(meta, dict) or meta.get("step") != step:
        raise ValueError(f"holds metadata of step {meta.get('step') if isinstance(meta, dict) else meta!r}")
    return meta

  def restore(self, step: int, abstract_state: Any, meta: dict | None = None) -> tuple[Any, dict, dict]:
    """(state laid out as `abstract_state`'s shardings, data iterator state, metadata) of checkpoint `step`.
    CorruptCheckpoint naming the file if it cannot be read or does not verify; a ConfigError if it holds a
    state of other shapes than `abstract_state`."""
    meta = self.read_meta(step) if meta is None else meta
    self.check_layout(step, abstract_state)
    with _reading(self.directory / str(step) / "data"):
      data = self._restore(step, data=grain.checkpoint.CheckpointRestore(IteratorState())).data.state
    with _reading(self.directory / str(step) / "state"):
      state = self._restore(step, state=ocp.args.StandardRestore(abstract_state)).state
    self.verify(step, state, meta)
    return state, data, meta

  def check_layout(self, step: int, abstract_state: Any) -> None:
    """The saved state has `abstract_state`'s arrays (paths, shapes, dtypes); a ConfigError naming the first
    difference if not (a resume cannot change shapes), a CorruptCheckpoint if its layout file is unreadable."""
    path = self.directory / str(step) / "state"
    with _reading(path):
      saved = self.manager.item_metadata(step)["state"]
    if saved is None:
      raise CorruptCheckpoint(f"{path}/_METADATA: missing or unreadable")
    saved = {_path_name(p): (tuple(x.shape), jnp.dtype(x.dtype))
             for p, x in jax.tree_util.tree_flatten_with_path(saved.tree)[0]}
    wanted = {_path_name(p): (tuple(x.shape), jnp.dtype(x.dtype))
              for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    for name in sorted(saved.keys() | wanted.keys()):
      if saved.get(name) != wanted.get(name):
        def show(v):
          return "nothing" if v is None else f"{list(v[0])} {v[1]}"
        raise ConfigError(f"checkpoint {step} in {self.directory} holds {name} as {show(saved.get(name))}, the "
                          f"config makes it {show(wanted.get(name))}; a resume cannot change the shapes of the state: "
                          "resume with the checkpoint's config or start a new workdir")

  def verify(self, step: int, state: Any, meta: dict) -> None:
    """The restored arrays match the checksums saved with them and the step counter matches the step."""
    path = self.directory / str(step) / "state"
    if int(jax.device_get(state["step"])) != step:
      raise CorruptCheckpoint(f"{path}: holds step counter {int(jax.device_get(state['step']))}, not {step}")
    expected = meta.get("checksums")
    if expected is None:  # written before checksums were recorded
      return
    for name, value in checksums(state).items():
      if expected.get(name) != value:
        raise CorruptCheckpoint(f"{path}: array {name} does not match its checksum (damaged data)")

  def restore_newest(self, abstract_state_at: Callable[[int], Any],
                     check_meta: Callable[[int, dict], None]) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data iterator state, metadata) of the newest checkpoint that restores and verifies;
    None if there is none at all. `check_meta(step, meta)` may refuse a checkpoint (it raises, e.g. on a
    changed config); `abstract_state_at(step)` gives the state layout to restore into. Newer checkpoints
    that failed are set aside with one line each; if none restores, nothing is moved."""
    skipped = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      error = None
      try:
        meta = self.read_meta(step)
        check_meta(step, meta)
        state, data, meta = self.restore(step, abstract_state_at(step), meta)
      except CorruptCheckpoint as e:
        error = str(e)
      if not _on_every_process(error is None):  # all processes restore the same step
        skipped.append((step, error or "another process could not restore it"))
        continue
      self._set_aside(skipped)
      return step, state, data, meta
    if skipped:
      reasons = "; ".join(f"{s}: {why}" for s, why in skipped)
      raise NoRestorableCheckpoint(f"no checkpoint in {self.directory} restores ({reasons}); move them away to "
                                   "start over")
    return None

  def _set_aside(self, skipped: list[tuple[int, str]]) -> None:
    """Move skipped checkpoints out of orbax's way (it would refuse to save their steps again, and delete
    them as old ones) into DIR/skipped_checkpoints/STEP-TIME, saying so in one line each."""
    if not skipped:
      return
    if jax.process_index() == 0:
      parent = self.directory.parent / SKIPPED
      parent.mkdir(parents=True, exist_ok=True)
      stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
      for step, why in skipped:
        target = parent / f"{step}-{stamp}"
        (self.directory / str(step)).rename(target)
        print(f"checkpoint {step} skipped: {why}; kept in {target}", file=sys.stderr)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("ablax_checkpoints_set_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
