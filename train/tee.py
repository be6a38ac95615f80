"""python -m train.tee PATH: copy stdin to stdout and to the log file PATH, local or remote (gs://...).

A local file gets each line as it comes (appended, so a relaunched run's log continues the previous
one's). Object stores cannot append: a remote file is rewritten whole (what it held before, then this
stream) every `--every` seconds and at the end of the stream.
"""

import argparse
import sys
import time
from collections.abc import Iterable

from train import paths


def tee(lines: Iterable[str], path: str, every: float = 30.0, out=sys.stdout) -> None:
  """Echo `lines` to `out` and append them to `path`."""
  dest = paths.path(path)
  dest.parent.mkdir(parents=True, exist_ok=True)
  if not paths.is_remote(dest):
    with dest.open("a") as f:
      for line in lines:
        out.write(line)
        out.flush()
        f.write(line)
        f.flush()
    return
  text = dest.read_text() if dest.exists() else ""
  written = time.monotonic()
  for line in lines:
    out.write(line)
    out.flush()
    text += line
    if time.monotonic() - written >= every:
      paths.write_atomic(dest, text)
      written = time.monotonic()
  paths.write_atomic(dest, text)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m train.tee", description=__doc__)
  parser.add_argument("path")
  parser.add_argument("--every", type=float, default=30.0, help="seconds between rewrites of a remote file")
  args = parser.parse_args(argv)
  tee(sys.stdin, args.path, args.every)


if __name__ == "__main__":
  main()
