"""One writer per workdir: an exclusive lock on DIR/lock, held for the whole run.

The lock is `flock` on DIR/lock. The kernel (or, on NFS, the server's lock manager) releases it
when its process dies however it dies, so a crash never leaves a lock that blocks: the next run
takes it and says whose it was. The file names the holder (host, pid, start time) so a second
writer can name it in its error. On filesystems without file locks (some FUSE mounts, e.g.
gcsfuse; Lustre mounted with noflock) a run prints a warning and goes on unprotected.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK = "lock"


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock."""


def describe(holder: dict) -> str:
  return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (started {holder.get('started', '?')})"


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode(errors="replace")
  try:
    return json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    return {}


def _write(fd: int, holder: dict) -> None:
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(holder).encode(), 0)
  os.fsync(fd)


class WorkdirLock:
  """Context manager: holds DIR/lock for the run; `enabled=False` (processes other than 0) does nothing."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self.path = os.path.join(workdir, LOCK)
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      raise WorkdirBusy(f"workdir {self.workdir} is in use by {describe(holder)} (lock {self.path}); wait for that "
                        "run to end or stop it, or use another --workdir") from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
        raise
      print(f"warning: cannot lock {self.path} ({e.strerror}): this filesystem has no file locks, so a second run "
            "on this workdir would not be stopped", file=sys.stderr)
      return self
    previous = _read(fd)
    if previous and not previous.get("released"):
      print(f"workdir lock: took over from {describe(previous)}, which ended without releasing it", file=sys.stderr)
    _write(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is None:
      return
    _write(self._fd, {**_read(self._fd), "released": True})
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
