"""Reading image files robustly: by content, not by suffix, into 8-bit gray.

Datasets in the wild hold `.jpg` files that are really PNG, RGB or RGBA scans of gray ultrasound,
and 16-bit PNGs. `read_gray` decodes whatever the bytes are (cv2.imdecode sniffs the format) and
returns one uint8 channel at the original size. Pixel orientation is the stored one (EXIF rotation
is not applied), which is the frame the annotations refer to.

Untrusted files: the size a file declares in its header is checked against `MAX_PIXELS` before
anything is decoded (`encoded_size`), so a small file that claims to be 60000x60000 pixels (a
"decompression bomb") is refused instead of exhausting memory. OpenCV's decoders can be lenient (a
truncated JPEG or BMP may come back with its missing part filled in), so PNG, JPEG, BMP and GIF
files must also be whole: their structure is walked to its end without decoding (`_check_strict`:
PNG chunks with their CRCs and the image data inflated in full, JPEG markers and scans to the
end-of-image marker, GIF blocks to the trailer, BMP pixel rows or RLE codes to the end), as
strict as TensorFlow's decoders for damage OpenCV hides, with no TensorFlow. Data preparation and
`aop_tf.predict` read files here, so a file is refused by one exactly when by the other. OpenCV's
own log lines are silenced; each refusal is reported once, naming the file.
"""

import struct
import zlib

import cv2
import numpy as np

from aop_tf.io import files

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


try:  # Our messages name the file; OpenCV's "[ERROR] imdecode_ ..." lines would only repeat them.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:
  pass

# Largest accepted image, pixels (width * height): 100 megapixels, e.g. 10000x10000. Ultrasound
# frames are at most a few megapixels; the cap bounds the memory one file can claim.
MAX_PIXELS = 100_000_000
# Largest accepted file, bytes: an uncompressed 100-megapixel RGB BMP (300 MB) fits. The file is
# held in memory while it decodes, so this and MAX_PIXELS bound a reader's peak memory (1.5 GB,
# README); larger files (a 16-bit RGBA TIFF of 100 megapixels is 800 MB) are refused.
MAX_FILE_BYTES = 320 << 20
# Above this many pixels an image is decoded straight to one 8-bit (or 16-bit) channel, not at its
# stored depth and channels: a 100-megapixel 16-bit RGBA PNG needs 800 MB that way, 100 MB this way.
LARGE_PIXELS = 16_000_000
_ROWS_PER_CHUNK = 1024  # bit-depth conversion in slices, so no full-size 32-bit copy is made


class ImageError(ValueError):
  """An image file that cannot be read or converted."""


def sniff_format(data):
  """`"png"`, `"jpeg"`, `"bmp"`, `"tiff"`, `"gif"` from the first bytes of `data`, else None."""
  for magic, name in _MAGIC:
    if data.startswith(magic):
      return name
  return None


def _jpeg_size(data):
  """(width, height) from the first SOFn marker of a JPEG, or None."""
  i = 2
  while i + 9 <= len(data):
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
      i += 2
      continue
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      height, width = struct.unpack(">HH", data[i + 5:i + 9])
      return width, height
    i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
  return None


def _tiff_size(data):
  """(width, height) from the first IFD of a classic TIFF, or None."""
  order = "<" if data[:2] == b"II" else ">"
  try:
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    size = {}
    for k in range(count):
      entry = data[offset + 2 + 12 * k:offset + 14 + 12 * k]
      tag, kind = struct.unpack(order + "HH", entry[:4])
      if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
        fmt = order + ("H" if kind == 3 else "I")
        size[tag] = struct.unpack(fmt, entry[8:8 + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None
  except (struct.error, KeyError):
    return None


def _webp_size(data):
  """(width, height) of a WebP (VP8, VP8L or VP8X), or None."""
  chunk = data[12:16]
  if chunk == b"VP8X" and len(data) >= 30:
    return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
  if chunk == b"VP8L" and len(data) >= 25:
    bits = int.from_bytes(data[21:25], "little")
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
  if chunk == b"VP8 " and len(data) >= 30:
    width, height = struct.unpack("<HH", data[26:30])
    return width & 0x3FFF, height & 0x3FFF
  return None


def encoded_size(data):
  """`(width, height)` an encoded image declares in its header, without decoding; None if the
  format (PNG, JPEG, GIF, BMP, TIFF, WebP) is not recognised or the header is cut short."""
  try:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
      return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
      return _jpeg_size(data)
    if data.startswith((b"GIF87a", b"GIF89a")):
      return struct.unpack("<HH", data[6:10])
    if data.startswith(b"BM"):
      if struct.unpack("<I", data[14:18])[0] == 12:  # BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
      width, height = struct.unpack("<ii", data[18:26])
      return abs(width), abs(height)  # negative height: top-down rows
    if data.startswith((b"II*\x00", b"MM\x00*")):
      return _tiff_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
      return _webp_size(data)
  except struct.error:
    return None
  return None


def check_size(data, where="image", max_pixels=MAX_PIXELS):
  """Raises ImageError when the header of encoded `data` declares more than `max_pixels`."""
  size = encoded_size(data)
  if size is not None and max_pixels and size[0] * size[1] > max_pixels:
    raise ImageError(f"{where}: the file declares {size[0]}x{size[1]} pixels, more than the "
                     f"{max_pixels / 1e6:g} megapixels accepted; downscale it first (or raise "
                     "the limit if the image is genuine)")


def to_gray_uint8(image, where="image"):
  """Converts a decoded cv2 image to uint8 gray [H, W].

  Args:
    image: [H, W], [H, W, 1], [H, W, 2] (gray + alpha), [H, W, 3] (BGR) or [H, W, 4] (BGRA); uint8,
      uint16 (scaled by 255 / 65535, rounded) or float in [0, 1].
    where: names the source in error messages.
  """
  if image.dtype == np.uint16:
    out = np.empty(image.shape, np.uint8)
    for start in range(0, image.shape[0], _ROWS_PER_CHUNK):
      rows = image[start:start + _ROWS_PER_CHUNK].astype(np.uint32)
      out[start:start + _ROWS_PER_CHUNK] = (rows * 255 + 32767) // 65535
    image = out
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


def _imdecode(data, flags=cv2.IMREAD_UNCHANGED):
  """cv2.imdecode; None where OpenCV cannot decode (or raises on) the bytes."""
  try:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error:
    return None


def is_large(data):
  """Whether the header of encoded `data` declares more than `LARGE_PIXELS` pixels."""
  size = encoded_size(data)
  return size is not None and size[0] * size[1] > LARGE_PIXELS


def read_bytes(path, what="file", max_bytes=MAX_FILE_BYTES):
  """The bytes of the regular file at `path` (`files.read_bounded`); ImageError naming it when it
  is not a regular file, unreadable or over `max_bytes`."""
  try:
    return files.read_bounded(path, max_bytes, what)
  except files.FileError as e:
    raise ImageError(str(e)) from None


def decode_gray(data, where="image"):
  """Decodes encoded image bytes (PNG, JPEG, BMP, TIFF; whatever the file name says) to uint8
  gray [H, W]."""
  if not data:
    raise ImageError(f"{where}: empty file")
  check_size(data, where)
  large = is_large(data)
  # A large image goes to one channel inside the decoder (BT.601 luma, alpha dropped, as
  # `to_gray_uint8` does for the others), so its full-depth colour copy never exists.
  image = _imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH if large else
                    cv2.IMREAD_UNCHANGED)
  kind = sniff_format(data)
  if image is None:
    detail = f"looks like {kind} but is corrupt or truncated" if kind else (
        f"not a PNG/JPEG/BMP/TIFF file (first bytes {data[:8]!r})")
    raise ImageError(f"{where}: cannot decode image: {detail}; re-export it as PNG")
  _check_strict(data, kind, where)
  return to_gray_uint8(image, where)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, GA, RGBA
# Adam7 interlacing: each pass's first column and row, and its steps.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_INFLATE_CHUNK = 1 << 20  # PNG image data is inflated (and counted) this many bytes at a time


def _png_raw_bytes(ihdr):
  """Bytes of filtered rows the IHDR chunk declares (every interlace pass), or None if invalid."""
  width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
  bits = depth * _PNG_CHANNELS.get(color, 0)
  if not bits or not width or not height:
    return None
  total = 0
  for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
    columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
    if columns > 0 and rows > 0:
      total += rows * (1 + (columns * bits + 7) // 8)
  return total


def _png_problem(data):
  """What is wrong with a PNG, or None: chunks (critical ones with their CRC) through IEND, and
  image data that inflates to at least the rows IHDR declares (counted, not kept)."""
  pos, inflate, expected, inflated = 8, zlib.decompressobj(), None, 0
  while pos + 12 <= len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    end = pos + 12 + length
    name = kind.decode("latin-1")
    if end > len(data):
      return f"the {name} chunk is cut short"
    body = data[pos + 8:end - 4]
    if not kind[0] & 0x20 and zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4:end])[0]:
      return f"CRC error in the {name} chunk"  # (ancillary chunks' CRCs are not checked)
    if (pos == 8) != (kind == b"IHDR") or (kind == b"IHDR" and length != 13):
      return "IHDR is not the one first chunk of 13 bytes"
    if kind == b"IHDR":
      expected = _png_raw_bytes(body)
    elif kind == b"IDAT":
      try:
        inflated += len(inflate.decompress(body, _INFLATE_CHUNK))
        while inflate.unconsumed_tail:
          inflated += len(inflate.decompress(inflate.unconsumed_tail, _INFLATE_CHUNK))
      except zlib.error as e:
        return f"corrupt image data: {e}"
    elif kind == b"IEND":
      if expected is None or inflated < expected:
        return f"the image data ends early ({inflated} of {expected} bytes)"
      return None
    pos = end
  return "no IEND chunk: truncated"


def _jpeg_scan_end(data, i, restarts):
  """Index of the marker that ends the entropy-coded data starting at `i`, or a str saying what
  is wrong. Inside, 0xFF is followed by 0x00 (stuffing) or, with `restarts`, RST0..7 in turn."""
  expected_rst = 0
  while True:
    j = data.find(b"\xff", i)
    while 0 <= j < len(data) - 1 and data[j + 1] == 0xFF:  # fill bytes before a marker
      j += 1
    if j < 0 or j + 1 >= len(data):
      return "no end-of-image marker: truncated"
    marker = data[j + 1]
    if marker == 0x00:
      i = j + 2
    elif 0xD0 <= marker <= 0xD7:
      if not restarts or marker - 0xD0 != expected_rst:
        return f"unexpected restart marker 0x{marker:02x} at byte {j}"
      expected_rst, i = (expected_rst + 1) % 8, j + 2
    else:
      return j


def _jpeg_problem(data):
  """What is wrong with a JPEG, or None: its segments and scans walked, marker by marker, to the
  end-of-image marker (trailing bytes after it are allowed, as decoders ignore them)."""
  i, restarts, scans = 2, False, 0
  while True:
    if i >= len(data) or data[i] != 0xFF:
      return ("no end-of-image marker: truncated" if i >= len(data) else
              f"no marker where one should be at byte {i}")
    while i < len(data) and data[i] == 0xFF:
      i += 1
    if i >= len(data):
      return "no end-of-image marker: truncated"
    marker, i = data[i], i + 1
    if marker == 0xD9:  # EOI
      return None if scans else "no image data before the end-of-image marker"
    if marker < 0xC0 or 0xD0 <= marker <= 0xD8:
      return f"unexpected marker 0x{marker:02x} at byte {i - 1}"
    if i + 2 > len(data) or i + struct.unpack(">H", data[i:i + 2])[0] > len(data):
      return "a segment is cut short"
    length = struct.unpack(">H", data[i:i + 2])[0]
    if marker == 0xDD and length >= 4:  # DRI: restart markers follow every N MCUs if N > 0
      restarts = struct.unpack(">H", data[i + 2:i + 4])[0] > 0
    i += length
    if marker == 0xDA:  # SOS: the entropy-coded data follows
      scans += 1
      i = _jpeg_scan_end(data, i, restarts)
      if isinstance(i, str):
        return i


def _gif_problem(data):
  """What is wrong with a GIF, or None: its blocks and their sub-blocks walked to the trailer."""
  def skip_table(pos, flags):
    return pos + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)

  if len(data) < 13:
    return "the header is cut short"
  pos = skip_table(13, data[10])
  while pos < len(data):
    block = data[pos]
    if block == 0x3B:  # trailer
      return None
    if block == 0x21:  # extension: label, then sub-blocks
      pos += 2
    elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
      if pos + 10 > len(data):
        return "an image descriptor is cut short"
      pos = skip_table(pos + 10, data[pos + 9]) + 1
    else:
      return f"unknown block 0x{block:02x} at byte {pos}"
    while pos < len(data) and data[pos]:
      pos += 1 + data[pos]
    pos += 1
  return "no trailer: truncated"


def _bmp_rle_complete(data, offset, bits):
  """Whether RLE8/RLE4 pixel codes from `offset` reach their end-of-bitmap code intact."""
  pos = offset
  while pos + 2 <= len(data):
    count, value = data[pos], data[pos + 1]
    pos += 2
    if count:  # a run
      continue
    if value == 1:  # end of bitmap
      return True
    if value == 2:  # delta: two bytes follow
      pos += 2
    elif value > 2:  # absolute: `value` pixels, padded to 16 bits
      size = value if bits == 8 else (value + 1) // 2
      pos += size + size % 2
  return False


def _bmp_problem(data):
  """What is wrong with a BMP, or None: the file size its header declares (where it does), and
  uncompressed pixel rows all there or RLE codes through their end-of-bitmap code (other
  compressions are left to OpenCV)."""
  if len(data) < 34:
    return "the header is cut short"
  declared, offset = struct.unpack_from("<I", data, 2)[0], struct.unpack_from("<I", data, 10)[0]
  if declared and declared != len(data):  # bytes inserted or lost
    return f"the file has {len(data)} bytes, its header says {declared}"
  if struct.unpack_from("<I", data, 14)[0] == 12:  # BITMAPCOREHEADER: uncompressed
    width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
    compression = 0
  else:
    width, height = struct.unpack_from("<ii", data, 18)
    bits, compression = struct.unpack_from("<HI", data, 28)
  if compression in (0, 3):  # rows, plain or with bit fields
    stride = (bits * abs(width) + 31) // 32 * 4
    if len(data) < offset + stride * abs(height):
      return "the file ends before its pixel rows do"
  elif compression in (1, 2) and not _bmp_rle_complete(data, offset, 8 if compression == 1 else 4):
    return "the RLE pixel codes end early"
  return None


_STRUCTURE_PROBLEMS = {"png": _png_problem, "jpeg": _jpeg_problem, "gif": _gif_problem,
                       "bmp": _bmp_problem}


def _check_strict(data, kind, where):
  """Raises ImageError when a PNG, JPEG, GIF or BMP file is corrupt or truncated in a way OpenCV
  may hide by filling in pixels (checked from the file's structure; TIFF is left to OpenCV)."""
  problem = _STRUCTURE_PROBLEMS[kind](data) if kind in _STRUCTURE_PROBLEMS else None
  if problem:
    raise ImageError(f"{where}: cannot decode image: looks like {kind} but is corrupt or "
                     f"truncated ({problem}); re-export it as PNG")


def read_gray(path):
  """Reads the image file at `path` as uint8 gray [H, W] at its original size."""
  return decode_gray(read_bytes(path), where=str(path))


def read_label_map(path):
  """Reads a label mask (PNG) as uint8 [H, W] without any colour conversion.

  Accepts one channel, or several identical channels (masks saved as RGB); anything else is an
  error, since averaging label values would invent labels.
  """
  data = read_bytes(path, "mask")
  if data:
    check_size(data, str(path))
  mask = _imdecode(data) if data else None
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
