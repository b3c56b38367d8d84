"""Reading a user's file safely: regular files only, and never more than a bound.

A FIFO named `scan.png` would block a reader forever, a symlink to `/dev/zero` would read until
memory runs out, and a folder or a socket has no bytes to read: every reader of user files
(images, masks, label CSVs, config files) goes through `read_bounded`, which refuses anything that
is not a regular file (after following links) and reads at most `max_bytes`.
"""

import os
import stat

MAX_TEXT_BYTES = 64 << 20  # a label CSV or a JSON file: 64 MiB is far beyond any real one


class FileError(ValueError):
  """A path that is not a readable regular file of acceptable size; the message names it."""


def check_regular(path, what="file"):
  """Raises FileError unless `path` (links followed) is a regular file."""
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    raise FileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
  if not stat.S_ISREG(mode):
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise FileError(f"{path}: {what} is {kind}, not a regular file; skipped")


def identity(path):
  """`(device, inode)` of the file at `path`, links followed: the same for every name of one file
  (a symlink, a hard link), None if it cannot be read."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return ("file", st.st_dev, st.st_ino)


def read_bounded(path, max_bytes, what="file"):
  """The bytes of the regular file at `path`, at most `max_bytes` of them.

  Raises:
    FileError naming the file when it is not a regular file, cannot be read, or is larger.
  """
  check_regular(path, what)
  try:
    with open(path, "rb") as f:
      data = f.read(max_bytes + 1) if max_bytes else f.read()
  except OSError as e:
    raise FileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
  if max_bytes and len(data) > max_bytes:
    raise FileError(f"{path}: {what} is larger than the {max_bytes / 2**20:.0f} MiB accepted; "
                    "is it really the right file?")
  return data
