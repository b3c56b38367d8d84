"""Reading image files robustly: by content, not by suffix, into 8-bit gray.

Datasets in the wild hold `.jpg` files that are really PNG, RGB or RGBA scans of gray ultrasound,
and 16-bit PNGs. `read_gray` decodes whatever the bytes are (cv2.imdecode sniffs the format) and
returns one uint8 channel at the original size. Pixel orientation is the stored one (EXIF rotation
is not applied), which is the frame the annotations refer to.
"""

import cv2
import numpy as np

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


class ImageError(ValueError):
  """An image file that cannot be read or converted."""


def sniff_format(data):
  """`"png"`, `"jpeg"`, `"bmp"`, `"tiff"` from the first bytes of `data`, else None."""
  for magic, name in _MAGIC:
    if data.startswith(magic):
      return name
  return None


def to_gray_uint8(image, where="image"):
  """Converts a decoded cv2 image to uint8 gray [H, W].

  Args:
    image: [H, W], [H, W, 1], [H, W, 2] (gray + alpha), [H, W, 3] (BGR) or [H, W, 4] (BGRA); uint8,
      uint16 (scaled by 255 / 65535, rounded) or float in [0, 1].
    where: names the source in error messages.
  """
  if image.dtype == np.uint16:
    image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  elif image.dtype in (np.float32, np.float64):
    if not np.all(np.isfinite(image)):
      raise ImageError(f"{where}: float image with NaN/inf pixels")
    image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise ImageError(f"{where}: unsupported pixel type {image.dtype}; convert it to 8-bit PNG")
  if image.ndim == 3:
    channels = image.shape[2]
    if channels in (1, 2):  # gray, gray + alpha: alpha is ignored
      image = image[:, :, 0]
    elif channels == 3:
      image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 4:
      image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    else:
      raise ImageError(f"{where}: unsupported number of channels {channels}")
  elif image.ndim != 2:
    raise ImageError(f"{where}: unsupported image shape {image.shape}")
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ImageError(f"{where}: empty image {image.shape}")
  return np.ascontiguousarray(image)


def decode_gray(data, where="image"):
  """Decodes encoded image bytes (PNG, JPEG, BMP, TIFF; whatever the file name says) to uint8
  gray [H, W]."""
  if not data:
    raise ImageError(f"{where}: empty file")
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if image is None:
    kind = sniff_format(data)
    detail = f"looks like {kind} but is corrupt or truncated" if kind else (
        f"not a PNG/JPEG/BMP/TIFF file (first bytes {data[:8]!r})")
    raise ImageError(f"{where}: cannot decode image: {detail}; re-export it as PNG")
  return to_gray_uint8(image, where)


def read_gray(path):
  """Reads the image file at `path` as uint8 gray [H, W] at its original size."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageError(f"{path}: cannot read file: {e.strerror or e}") from e
  return decode_gray(data, where=str(path))


def read_label_map(path):
  """Reads a label mask (PNG) as uint8 [H, W] without any colour conversion.

  Accepts one channel, or several identical channels (masks saved as RGB); anything else is an
  error, since averaging label values would invent labels.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageError(f"{path}: cannot read mask: {e.strerror or e}") from e
  mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
  if mask is None:
    raise ImageError(f"{path}: cannot decode mask; expected an 8-bit PNG of labels")
  if mask.dtype != np.uint8:
    if mask.dtype == np.uint16 and mask.max() <= 255:
      mask = mask.astype(np.uint8)
    else:
      raise ImageError(f"{path}: mask has pixel type {mask.dtype}; expected 8-bit labels")
  if mask.ndim == 3:
    if mask.shape[2] == 4:
      mask = mask[:, :, :3]
    if not all(np.array_equal(mask[:, :, 0], mask[:, :, c]) for c in range(1, mask.shape[2])):
      raise ImageError(f"{path}: colour mask with different channels; expected a label map")
    mask = mask[:, :, 0]
  return np.ascontiguousarray(mask)


def encode_png(image):
  """uint8 [H, W] -> PNG bytes (one channel)."""
  ok, buf = cv2.imencode(".png", image)
  if not ok:
    raise ImageError("cv2 could not encode a PNG")
  return buf.tobytes()
