"""One writer per workdir: a lock on DIR/lock, held by process 0 of a run for the whole run.

Local and NFS workdirs: `flock` on DIR/lock. The kernel (or, on NFS, the server's lock manager) releases
it when its process dies however it dies, so a crash never leaves a lock that blocks: the next run takes
it and says whose it was. On filesystems without file locks (some FUSE mounts, e.g. gcsfuse; Lustre
mounted with noflock) a run prints a warning and goes on unprotected.

gs:// workdirs: DIR/lock is an object created only if absent (a GCS precondition) and rewritten by its
holder every HEARTBEAT_SECONDS; a lock whose heartbeat is older than STALE_SECONDS belongs to a dead run
and is taken over. Two runs that both find the same stale lock at the same moment can both take it
(the takeover is a delete then a create); the precondition decides ties only between fresh creates.

Either way the lock names its holder (host, pid, start time), so a second writer can say who it is.
The other processes of a multi-process run take no lock: they learn from process 0 whether it got it.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from train import paths

LOCK = "lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir's lock."""


def _holder() -> dict:
  now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": time.time()}


def describe(holder: dict) -> str:
  return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (started {holder.get('started', '?')})"


def _parse(text: str) -> dict:
  try:
    return json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    return {}


class _FileLock:
  """flock on a local (or NFS) DIR/lock."""

  def __init__(self, path):
    self.path, self._fd = path, None

  def _read(self) -> dict:
    os.lseek(self._fd, 0, os.SEEK_SET)
    return _parse(os.read(self._fd, 1 << 16).decode(errors="replace"))

  def _write(self, holder: dict) -> None:
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(holder).encode(), 0)
    os.fsync(self._fd)

  def acquire(self) -> None:
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read()
      self._close()
      raise WorkdirBusy(f"workdir {self.path.parent} is in use by {describe(holder)} (lock {self.path}); wait for "
                        "that run to end or stop it, or use another --workdir") from None
    except OSError as e:
      self._close()
      if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
        raise
      print(f"warning: cannot lock {self.path} ({e.strerror}): this filesystem has no file locks, so a second run "
            "on this workdir would not be stopped", file=sys.stderr)
      return
    previous = self._read()
    if previous and not previous.get("released"):
      print(f"workdir lock: took over from {describe(previous)}, which ended without releasing it", file=sys.stderr)
    self._write(_holder())

  def _close(self) -> None:
    os.close(self._fd)
    self._fd = None

  def release(self) -> None:
    if self._fd is None:
      return
    self._write({**self._read(), "released": True})
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    self._close()


class _ObjectLock:
  """A create-if-absent object with a heartbeat, for gs:// workdirs."""

  def __init__(self, path):
    self.path = path
    self._holder: dict | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    if self.path.exists():
      previous = _parse(self.path.read_text())
      age = time.time() - float(previous.get("heartbeat", 0))
      if not previous.get("released") and age < STALE_SECONDS:
        raise WorkdirBusy(f"workdir {self.path.parent} is in use by {describe(previous)}, last heartbeat {age:.0f} s "
                          f"ago (lock {self.path}); wait for that run to end, or if it is dead, for its lock to go "
                          f"stale ({STALE_SECONDS:.0f} s without a heartbeat) or delete {self.path}")
      self.path.unlink()
      if not previous.get("released"):
        print(f"workdir lock: took over from {describe(previous)}, whose last heartbeat was {age:.0f} s ago",
              file=sys.stderr)
    import gcsfs

    self._holder = _holder()
    try:  # GCS creates the object only if none exists (ifGenerationMatch=0): of two racing runs, one wins
      gcsfs.GCSFileSystem().pipe(os.fspath(self.path), json.dumps(self._holder).encode(), mode="create")
    except FileExistsError:
      raise WorkdirBusy(f"workdir {self.path.parent} was locked by another run just now (lock {self.path})") from None
    self._thread = threading.Thread(target=self._beat, daemon=True, name="ablax-workdir-lock")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self._holder["heartbeat"] = time.time()
      self.path.write_text(json.dumps(self._holder))

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self.path.write_text(json.dumps({**self._holder, "released": True}))
    self._thread = None


def workdir_lock(workdir):
  """The lock of `workdir`: a flock for local paths, a heartbeat object for gs://."""
  path = paths.path(workdir) / LOCK
  return _ObjectLock(path) if paths.is_remote(path) else _FileLock(path)


@contextlib.contextmanager
def hold(workdir):
  """Hold `workdir`'s lock for the block: process 0 takes it; every process fails (WorkdirBusy) if it could
  not, so that no process of a refused run waits for the others."""
  lock, error = None, None
  if jax.process_index() == 0:
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
    lock = workdir_lock(workdir)
    try:
      lock.acquire()
    except WorkdirBusy as e:
      error, lock = e, None
  if jax.process_count() > 1:
    held = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not held and error is None:
      error = WorkdirBusy(f"process 0 could not lock workdir {workdir}; see its output")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
