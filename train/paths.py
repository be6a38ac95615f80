"""Paths of runs, sweeps and reports: local or remote (gs://), every one through etils.epath.

Remote workdirs need the `[gcs]` extra (gcsfs for epath, google-cloud-storage for TensorBoard's gs://
writer); orbax reaches GCS through tensorstore by itself. A GCS object is written whole or not at all,
so a remote write is atomic as it is; a local one goes through a temporary file and a rename.
"""

import os

from etils import epath


def path(p: "str | os.PathLike") -> epath.Path:
  """An epath.Path; local paths are made absolute (orbax wants them so)."""
  return epath.Path(p) if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


def is_remote(p: "str | os.PathLike") -> bool:
  return "://" in os.fspath(p)


def write_atomic(p: epath.Path, text: str) -> None:
  """Replace the file at `p` with `text`; readers see the old or the new content, never a part."""
  if is_remote(p):
    p.write_text(text)
    return
  tmp = p.parent / f"{p.name}.tmp{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(p)


def append(p: epath.Path, text: str) -> None:
  """Append `text` to the file at `p` (GCS objects cannot grow: a remote file is rewritten)."""
  if is_remote(p):
    write_atomic(p, (p.read_text() if p.exists() else "") + text)
    return
  with p.open("a") as f:
    f.write(text)
