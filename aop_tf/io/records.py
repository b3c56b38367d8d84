"""What the label readers yield: one `Record` per usable example, one `InputError` per refused input.

Shared by the IUGC CSV reader (`aop_tf.io.labels`), the evaluation data sources and every
`data_prep` source. Points are `(x, y)` original pixels, order PS1, PS2, FH1.
"""

import dataclasses
import typing

import numpy as np

SPLITS = ("train", "val", "test", "unlabeled")
UNLABELED = "unlabeled"  # images without landmarks (for semi-supervised training)


class InputError(ValueError):
  """One input (CSV row, image, mask) that cannot be used; the message names it and says why.

  Attributes:
    reason: short category for the build summary, e.g. "bad point", "duplicate filename".
  """

  def __init__(self, message, reason="invalid input"):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class Record:
  """One example before serialisation.

  Attributes:
    filename: path relative to the image folder (POSIX separators).
    image: uint8 [H, W] gray, original size.
    landmarks: float32 [3, 2] `(x, y)` original pixels, order PS1, PS2, FH1; None for an
      unlabeled image.
    mask: uint8 [H, W] labels (0 bg, 1 pubic symphysis, 2 fetal head), or None.
    where: where it came from, for messages (e.g. "train.csv line 7").
    path: the image file read, if any (duplicates under other names are found through it).
    frame: the frame of a clip or multi-frame DICOM (`path#frame`), or None for a still image.
  """
  filename: str
  image: np.ndarray
  landmarks: typing.Optional[np.ndarray]
  mask: typing.Optional[np.ndarray] = None
  where: str = ""
  path: str = ""
  frame: typing.Optional[int] = None
