"""Reading a user's file safely: regular files only, and never more than a bound.

A FIFO named `scan.png` would block a reader forever, a symlink to `/dev/zero` would read until
memory runs out, and a folder or a socket has no bytes to read: every reader of user files
(images, masks, label CSVs, config files) goes through `read_bounded`, which refuses anything that
is not a regular file (after following links) and reads at most `max_bytes`.
"""

import json
import os
import stat
import tempfile

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


TEMP_PREFIX = ".tmp-"


def fsync_path(path):
  """Flushes a file or folder to the disk (best effort: some file systems refuse folders)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path, write_fn, prefix=TEMP_PREFIX):
  """Calls `write_fn(tmp)` on a temporary file beside `path` (its name starts with `prefix`), then
  renames it over `path` (after an fsync), so readers see the old file or the new one, never a
  part.

  Raises:
    OSError naming `path`, saying whether the previous version is intact.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  try:
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
  except OSError as e:
    raise OSError(e.errno, f"{path}: cannot write in {folder} ({e.strerror})") from None
  os.close(fd)
  try:
    write_fn(tmp)
    fsync_path(tmp)  # The data reaches the disk before the name points at it.
    os.replace(tmp, path)
  except OSError as e:  # a full disk, a file-size limit, ...: say where, and what is safe
    if os.path.exists(tmp):
      os.remove(tmp)
    kept = "the previous version is intact" if os.path.exists(path) else "nothing was written"
    raise OSError(e.errno, f"{path}: writing failed ({e.strerror or e}); {kept}") from None
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_path(folder)  # ... and the rename itself survives a power cut.


def write_json(path, obj):
  """Writes `obj` as indented JSON with sorted keys, atomically (`atomic_write`)."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
  atomic_write(path, write)


def read_json(path):
  """The JSON at `path` (a regular file of at most `MAX_TEXT_BYTES`)."""
  return json.loads(read_bounded(path, MAX_TEXT_BYTES, "JSON file"))
