"""Orbax checkpoints of a run: train state, per-process data-iterator state and metadata.

Async saves every N steps, keep the last K; `restore_latest` resumes from the workdir onto any
mesh (the target shardings decide the layout). Orbax writes to a temporary directory and
renames it when complete, so a kill mid-save never leaves a checkpoint that looks finished.
"""

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


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


def versions() -> dict[str, str]:
  import flax
  import optax

  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__ if hasattr(ocp, "__version__") else "", "grain": grain.__version__}


class Checkpointer:
  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> bool:
    """Save if `step` is on the interval (or `force`); returns whether a save started."""
    return self.manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(IteratorState(data_state)),
      meta=ocp.args.JsonSave({**meta, "step": step, "versions": versions()}),
    ), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """(state laid out as `abstract_state`'s shardings, data iterator state, metadata)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(IteratorState()),
      meta=ocp.args.JsonRestore(),
    ))
    return out.state, out.data.state, out.meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
