"""The one enumerator of user inputs, shared by predict, evaluate, data prep and the viewer.

An `--inputs` value is a file, a folder (searched recursively), a glob, a comma-separated list or
`@list.txt` (one entry a line, `#` comments). Folders yield still images, DICOMs and videos by
suffix (a DICOM may also have no suffix: such files are kept when they start like DICOM), never
hidden files or folders. With `clip_dirs=True` a folder whose files are all numbered still images
is one clip (`aop_tf.io.frame_folder`) instead of many images. A file named explicitly is always
taken, whatever its suffix: the reader decides by content.
"""

import glob
import os

from aop_tf.io import files
from aop_tf.io import frames

MEDIA_SUFFIXES = frames.STILL_SUFFIXES + frames.DICOM_SUFFIXES + frames.VIDEO_SUFFIXES


def input_specs(values):
  """The files, folders and globs named by `--inputs` values.

  A value is taken whole when it names something that exists or a glob that matches (so a file
  name may hold a comma); `@FILE` names a list file, one entry a line (`#` comments); anything
  else is split on commas.
  """
  if isinstance(values, str):
    values = [values]
  specs = []
  for value in values or ():
    if value.startswith("@"):
      text = files.read_bounded(value[1:], files.MAX_TEXT_BYTES, "--inputs list").decode(
          "utf-8", "replace")
      specs.extend(line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    elif os.path.exists(value) or glob.glob(value, recursive=True):
      specs.append(value)
    else:
      specs.extend(value.split(","))
  return [s.strip() for s in specs if s.strip()]


def _hidden(name):
  return name.startswith(".")


def _is_media(path):
  name = os.path.basename(path)
  if name.lower().endswith(MEDIA_SUFFIXES):
    return True
  return "." not in name and frames.is_dicom(path)  # DICOM files often have no suffix


def scan_folder(folder, clip_dirs=False):
  """Media files under `folder` (recursively, no hidden names), sorted naturally; with
  `clip_dirs`, a folder whose files are all numbered still images is returned whole (a clip)."""
  found = []
  for root, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not _hidden(d))
    visible = [n for n in names if not _hidden(n)]
    if clip_dirs and is_frame_folder(root, visible):
      found.append(root)
      dirs[:] = []
      continue
    found.extend(os.path.join(root, n) for n in visible if _is_media(os.path.join(root, n)))
  return found


def is_frame_folder(folder, names=None):
  """Whether `folder` holds two or more still images whose names all carry a frame number."""
  from aop_tf.io import frame_folder  # pylint: disable=import-outside-toplevel
  if names is None:
    names = [n for n in os.listdir(folder) if not _hidden(n)]
  stills = [n for n in names if n.lower().endswith(frames.STILL_SUFFIXES)]
  return (len(stills) >= 2 and len(stills) == len([n for n in names if _is_media(n)])
          and all(frame_folder.frame_number(n) is not None for n in stills))


def find_inputs(values, clip_dirs=False):
  """Expands `--inputs` values into the sources to read.

  Args:
    values: `--inputs` values (see `input_specs`).
    clip_dirs: a folder of numbered frames (named or found inside a folder) is one clip.

  Returns:
    `(paths, unmatched)`: sources (files, and frame folders with `clip_dirs`) sorted naturally
    with duplicates (the same file under two names) removed, and the specs that matched nothing.
  """
  paths, unmatched = [], []
  for spec in input_specs(values):
    if os.path.isdir(spec):
      found = scan_folder(spec, clip_dirs)
    elif os.path.exists(spec) or os.path.islink(spec):
      found = [spec]
    else:
      found = [p for p in glob.glob(spec, recursive=True)
               if os.path.isfile(p) or (clip_dirs and os.path.isdir(p))]
    if not found:
      unmatched.append(spec)
    paths.extend(found)
  unique, seen = [], set()
  for path in sorted(set(paths), key=natural_key):
    identity = files.identity(path) if os.path.isfile(path) else ("dir", os.path.realpath(path))
    if identity is not None and identity in seen:
      continue
    seen.add(identity)
    unique.append(path)
  return unique, unmatched


def natural_key(text):
  """Sort key that orders `frame2` before `frame10`."""
  import re  # pylint: disable=import-outside-toplevel
  return [int(part) if part.isdigit() else part.lower()
          for part in re.split(r"(\d+)", str(text))]
