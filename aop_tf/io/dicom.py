"""DICOM files as frame sources: a single image or a multi-frame cine loop (`DicomSource`).

pydicom reads the header; pixels are decoded one frame at a time straight from the file
(`pydicom.pixels.pixel_array(file, index=i)`: the JPEG family and JPEG-LS through
pylibjpeg-libjpeg, JPEG 2000 through pylibjpeg-openjpeg, RLE through pydicom), so a long loop
is never held decoded. A Deflated file is inflated into memory first (the format allows no
other way); only its image pixel elements are kept.

Transfer syntaxes: Implicit/Explicit VR Little Endian, Explicit VR Big Endian, Deflated, RLE
Lossless, JPEG Baseline, JPEG Extended, JPEG Lossless (process 14 and SV1), JPEG-LS (lossless
and near-lossless), JPEG 2000 (lossless and lossy). Others (MPEG-2/4, HEVC, JPEG XL, private)
are refused at open with a FrameError saying what to do.

Pixels -> uint8 [H, W, C] (C = 1 gray, 3 RGB):
- gray stored in 8 bits (ultrasound's usual): the stored values; MONOCHROME1 inverted
  (`255 - v`, so bright means high, as MONOCHROME2).
- gray stored in more bits: the first Window Center/Width when the file has one (after Rescale
  Slope/Intercept; the linear VOI function of PS3.3 C.11.2.1.2, to 0..255), else the full stored
  range: `v * 255 / (2**BitsStored - 1)`, rounded (signed data shifted by `2**(BitsStored-1)`),
  so 8-bit data stored as `v * 257` in 16 bits comes back as `v` exactly. MONOCHROME1 inverted.
- RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT: RGB (pydicom's or the codec's colour
  conversion); more than 8 bits stored: the full stored range as above.
- PALETTE COLOR: RGB through the file's lookup tables (16-bit entries x 255/65535, rounded).

Privacy: a `DicomSource` keeps only what `frames.SourceInfo` and the pixel conversion need (sizes,
bit depths, photometric interpretation, window, frame times, spacing, the palette): no patient,
study or institution attribute. Error messages are written here from those values, the transfer
syntax and the SOP class name; pydicom's own messages, warnings and log lines (which may quote
element values, e.g. in its debug mode) are never passed on: while it works for this reader its
logger ("pydicom" and children) makes no records and its warnings are dropped.
"""

import contextlib
import dataclasses
import logging
import math
import os
import re
import struct
import threading
import warnings
from typing import Optional, Tuple

import numpy as np
import pydicom
from pydicom import filereader
from pydicom import pixels
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue

from aop_tf.io import frames
from aop_tf.io import images as image_files

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR
PIXEL_DATA = 0x7FE00010
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
GRAY = ("MONOCHROME1", "MONOCHROME2")
PALETTE = "PALETTE COLOR"
IRREGULAR = "irregular"  # a Pixel Data element to read from a whole data set
PIXEL_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelData")
CONVERT_HINT = ("convert it to Explicit VR Little Endian (e.g. `gdcmconv --raw in.dcm out.dcm` "
                "or dcmtk's `dcmdjpeg`) or export the loop uncompressed or as a video file")


class _Quiet:
  """A context in which pydicom makes no log records and its warnings are dropped: both may quote
  element values (a patient's name or ID). Nested and concurrent uses share one saved level."""

  def __init__(self):
    self._lock = threading.Lock()
    self._depth = 0
    self._level = logging.NOTSET

  @contextlib.contextmanager
  def __call__(self):
    logger = logging.getLogger("pydicom")  # its children (pydicom.pixels...) inherit the level
    with self._lock:
      if self._depth == 0:
        self._level = logger.level
        logger.setLevel(logging.CRITICAL + 1)
      self._depth += 1
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    finally:
      with self._lock:
        self._depth -= 1
        if self._depth == 0:
          logger.setLevel(self._level)


_quiet = _Quiet()


@dataclasses.dataclass(frozen=True)
class PixelFormat:
  """How a decoded frame becomes uint8: the image pixel elements the conversion needs.

  Attributes:
    rows, columns, samples: frame size and samples per pixel (1 or 3).
    photometric: the Photometric Interpretation.
    bits_stored: significant bits per sample; `signed`: Pixel Representation 1.
    window: `(center, width)` after `rescale`, or None; `rescale`: `(slope, intercept)`.
    palette: uint8 [2**bits, 3] RGB of each stored index (PALETTE COLOR), or None.
  """
  rows: int
  columns: int
  samples: int
  photometric: str
  bits_stored: int
  signed: bool = False
  window: Optional[Tuple[float, float]] = None
  rescale: Tuple[float, float] = (1.0, 0.0)
  palette: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)


class DicomSource(frames.Source):
  """A DICOM Part-10 file: one frame, or the frames of a multi-frame object (a cine loop).

  `info.fps` comes from FrameTime (ms), CineRate or RecommendedDisplayFrameRate (NaN without);
  a FrameTimeVector gives each frame's `time_s` (its cumulative sum), else `index / fps`.
  `info.pixel_spacing_mm` is `(column, row)` mm from PixelSpacing (stored row first), else from
  the first ultrasound region calibrated in cm (PhysicalDeltaX/Y x 10), else None.

  Raises:
    frames.FrameError (one line naming the file and what to do) for a file that is not DICOM, a
    DICOMDIR, an object without pixel data, an unsupported transfer syntax or pixel format.
  """

  def __init__(self, path, max_pixels=image_files.MAX_PIXELS):
    self._path = str(path)
    self._lock = threading.Lock()
    self._file = self._memory = None
    with _quiet():
      self._open(max_pixels)

  def _open(self, max_pixels):
    meta = _read_meta(self._path)
    self._syntax = _check_syntax(self._path, meta)
    pixel_element = IRREGULAR
    if not _is_deflated(self._syntax):
      self._file = open(self._path, "rb")  # pylint: disable=consider-using-with
      header, pixel_element = _read_until_pixels(self._path, self._file)
    if pixel_element is IRREGULAR:
      # Deflated, or a Pixel Data element pydicom reads only from a whole data set (an implicit
      # VR element in an explicit VR file): held in memory, pixel elements only.
      self.close()
      header, pixel_element = _read_whole(self._path, self._syntax)
      if pixel_element is not None:
        self._memory = _pixel_dataset(header, self._syntax)
    try:
      self._setup(header, pixel_element, meta, max_pixels)
    except BaseException:
      self.close()
      raise

  def _setup(self, header, pixel_element, meta, max_pixels):
    if pixel_element is None:
      raise frames.FrameError(_no_pixels_message(self._path, header, meta))
    self._format = _pixel_format(self._path, header, max_pixels)
    n_frames = _int(header, "NumberOfFrames", 1) or 1
    fps, self._times_s = _timing(header, n_frames)
    self._complete = n_frames
    if self._file is not None and self._syntax.is_encapsulated:
      self._complete = _complete_encapsulated(self._file, pixel_element[0], n_frames)
    elif self._file is not None:
      self._complete = _complete_frames(header, pixel_element, os.fstat(self._file.fileno()))
    self.info = frames.SourceInfo(
        self._path, "dicom", n_frames, fps, (self._format.columns, self._format.rows),
        _spacing_mm(header))

  def _read(self, index):
    where = f"{self._path}: frame {index}" if self.info.n_frames > 1 else self._path
    if index >= self._complete:
      raise frames.FrameError(
          f"{where}: the pixel data ends before this frame is complete (the file is truncated: "
          f"{self._complete} of {self.info.n_frames} frames complete); copy or export it again")
    with self._lock, _quiet():
      source = self._memory if self._memory is not None else self._file
      if source is None:
        raise frames.FrameError(f"{self._path}: the source is closed; open it again")
      try:
        array = pixels.pixel_array(source, index=index)
      except Exception as e:  # pylint: disable=broad-except
        raise frames.FrameError(_decode_message(where, self._syntax, e)) from None
    return to_uint8(array, self._format, where)

  def _frame(self, index, image):
    frame = super()._frame(index, image)
    if self._times_s is not None and index < len(self._times_s):
      frame = dataclasses.replace(frame, time_s=float(self._times_s[index]))
    return frame

  def close(self):
    if self._file is not None:
      self._file.close()
    self._file = self._memory = None


# --------------------------------------------------------------------------------------------
# Reading the header


def _read_meta(path):
  """The file meta group (transfer syntax, SOP class); FrameError if not a DICOM Part-10 file."""
  if os.path.basename(path).upper() == "DICOMDIR":
    raise frames.FrameError(_dicomdir_message(path))
  try:
    meta = filereader.read_file_meta_info(path)
  except OSError as e:
    raise frames.FrameError(f"{path}: cannot read the file ({e.strerror or type(e).__name__}); "
                            "check that it exists and is readable") from None
  except Exception as e:  # pylint: disable=broad-except
    raise frames.FrameError(
        f"{path}: not a DICOM Part-10 file (no 'DICM' marker after the 128-byte preamble, or a "
        f"corrupt file meta group: {_reason(e)}); pass a DICOM file, an image or a video") from None
  if _uid(meta, "MediaStorageSOPClassUID") == MEDIA_DIRECTORY:
    raise frames.FrameError(_dicomdir_message(path))
  return meta


def _dicomdir_message(path):
  return (f"{path}: a DICOMDIR (the directory index of DICOM media), no image; pass the folder "
          "or the DICOM files it lists instead")


def _check_syntax(path, meta):
  """The transfer syntax UID; FrameError when there is none or no decoder for it is installed."""
  syntax = _uid(meta, "TransferSyntaxUID")
  if not syntax:
    raise frames.FrameError(f"{path}: the file meta group names no transfer syntax; "
                            f"{CONVERT_HINT}")
  syntax = uids.UID(syntax)
  if _is_deflated(syntax):
    return syntax
  try:
    decoder = pixels.get_decoder(syntax)
  except NotImplementedError:
    raise frames.FrameError(f"{path}: transfer syntax {_syntax_name(syntax)} is not supported; "
                            f"{CONVERT_HINT}") from None
  if not decoder.is_available:
    needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
    raise frames.FrameError(f"{path}: decoding {_syntax_name(syntax)} needs {needs}; install it "
                            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
  return syntax


def _is_deflated(syntax):
  return syntax.is_transfer_syntax and syntax.is_deflated


def _read_until_pixels(path, f):
  """(header without pixel data, (offset, length) of the Pixel Data value, None when there is
  none, or `IRREGULAR`), reading `f` up to the top-level Pixel Data element."""
  try:
    header = pydicom.dcmread(f, stop_before_pixels=True)
  except Exception as e:  # pylint: disable=broad-except
    f.close()
    raise frames.FrameError(f"{path}: cannot parse the DICOM header ({_reason(e)}); the file is "
                            "corrupt or truncated: copy or export it again") from None
  tag = f.read(8)
  if len(tag) < 8:
    return header, None
  little = header.original_encoding[1] is not False
  group, element = (int.from_bytes(tag[i:i + 2], "little" if little else "big") for i in (0, 2))
  if (group << 16 | element) != PIXEL_DATA:
    return header, None
  if not header.original_encoding[0]:
    if tag[4:6] not in (b"OB", b"OW", b"UN"):
      return header, IRREGULAR
    tag = tag[:4] + f.read(4)
  return header, (f.tell(), int.from_bytes(tag[4:8], "little" if little else "big"))


def _read_whole(path, syntax):
  """(the whole data set, (0, length) of its Pixel Data or None)."""
  what = "inflate the Deflated data set" if _is_deflated(syntax) else "parse the DICOM data set"
  try:
    dataset = pydicom.dcmread(path)
  except Exception as e:  # pylint: disable=broad-except
    raise frames.FrameError(f"{path}: cannot {what} ({_reason(e)}); the file is corrupt or "
                            "truncated: copy or export it again") from None
  element = dataset.get("PixelData")
  return dataset, (None if element is None else (0, len(element)))


def _pixel_dataset(dataset, syntax):
  """Only the image pixel elements of `dataset` (group 0028 and the pixel data): what
  `pixels.pixel_array` needs, nothing of the patient or study."""
  kept = Dataset()
  kept.file_meta = FileMetaDataset()
  kept.file_meta.TransferSyntaxUID = syntax
  for element in dataset.group_dataset(0x0028):
    kept.add(element)
  for keyword in PIXEL_KEYWORDS:
    if keyword in dataset:
      kept.add(dataset[keyword])
  kept.set_original_encoding(*dataset.original_encoding)
  return kept


def _complete_frames(header, pixel_element, stat):
  """How many whole frames of natively encoded pixel data the file holds."""
  offset, length = pixel_element
  frame_bytes = (_int(header, "Rows", 0) * _int(header, "Columns", 0)
                 * _int(header, "SamplesPerPixel", 1) * _int(header, "BitsAllocated", 8) // 8)
  if _text(header, "PhotometricInterpretation") == "YBR_FULL_422":
    frame_bytes = frame_bytes * 2 // 3  # two chroma samples per two pixels (PS3.3 C.7.6.3.1.2)
  available = min(length, stat.st_size - offset)
  return available // frame_bytes if frame_bytes > 0 else 0


def _items(f, offset, size):
  """`([(start, end)] of the item values of encapsulated pixel data from `offset`, whether the
  sequence delimiter was reached)`; stops at the end of the file or at a malformed item."""
  items, position = [], offset
  while position + 8 <= size:
    f.seek(position)
    group, element, length = struct.unpack("<HHL", f.read(8))
    if (group, element) == (0xFFFE, 0xE0DD):
      return items, True
    if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
      return items, True  # not truncation: the decoder will judge what is there
    items.append((position + 8, position + 8 + length))
    position += 8 + length
  return items, False


def _complete_encapsulated(f, offset, n_frames):
  """How many leading frames of encapsulated pixel data lie wholly in the file: all of them
  unless the file ends before the sequence delimiter (a truncated file)."""
  size = os.fstat(f.fileno()).st_size
  items, delimited = _items(f, offset, size)
  whole = [item for item in items if item[1] <= size]
  if delimited or (items and len(whole) == len(items)):
    return n_frames  # complete, or only the delimiter is missing
  if not whole:
    return 0
  f.seek(whole[0][0])  # the first item is the Basic Offset Table (maybe empty)
  table = f.read(whole[0][1] - whole[0][0])
  starts = struct.unpack(f"<{len(table) // 4}L", table[:len(table) // 4 * 4])
  fragments = whole[1:]
  if len(starts) == n_frames and fragments:
    # Offsets count from the first fragment's item tag; frame i - 1 ends where frame i starts.
    end = fragments[-1][1] - (fragments[0][0] - 8)
    return sum(1 for i in range(1, n_frames) if starts[i] <= end)
  return min(len(fragments), n_frames - 1)  # one fragment per frame, the last one cut short


def _no_pixels_message(path, header, meta):
  sop = _uid(meta, "MediaStorageSOPClassUID") or _uid(header, "SOPClassUID")
  what = _safe_text(uids.UID(sop).name if sop else "", "an unknown SOP class")
  modality = _safe_text(_text(header, "Modality"), "")
  kind = f"modality {modality}, {what}" if modality else what
  if "Rows" in header and "Columns" in header:
    return (f"{path}: the file ends before its pixel data ({kind}; truncated?); copy or export "
            "it again")
  return f"{path}: no pixel data ({kind}), nothing to measure; pass an image or a cine loop"


# --------------------------------------------------------------------------------------------
# Values of the header: sanitised, never echoed raw


def _text(dataset, keyword):
  """A single-valued text element, stripped ('' when absent or unreadable)."""
  try:
    return str(dataset.get(keyword, "") or "").strip("\0 ")
  except Exception:  # pylint: disable=broad-except
    return ""


def _uid(dataset, keyword):
  """A UID element as a plain dotted string ('' when absent or not a UID)."""
  value = _text(dataset, keyword)
  return value if re.fullmatch(r"[0-9.]{1,64}", value) else ""


def _syntax_name(syntax):
  name = _safe_text(syntax.name, "")
  return f"{name} ({syntax})" if name and name != str(syntax) else f"'{syntax}' (private)"


def _safe_text(text, default):
  """`text` if it is a plain short name (letters, digits, spaces, a few signs), else `default`."""
  return text if re.fullmatch(r"[A-Za-z0-9 _.,()/&+-]{1,80}", text or "") else default


def _reason(error):
  """A safe stand-in for a pydicom exception: its type name only (messages may quote values)."""
  kind = type(error)
  return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _float(dataset, keyword, default=None, item=0):
  """A numeric element (item `item` of a multi-valued one) as a finite float, else `default`."""
  try:
    value = dataset.get(keyword)
    if value is None or value == "":
      return default
    if isinstance(value, (list, tuple, MultiValue)):
      value = value[item]
    value = float(value)
  except Exception:  # pylint: disable=broad-except
    return default
  return value if math.isfinite(value) else default


def _int(dataset, keyword, default=None):
  value = _float(dataset, keyword)
  return default if value is None else int(value)


def _pixel_format(path, header, max_pixels):
  """The `PixelFormat` of the image pixel module; FrameError for one this reader cannot turn
  into uint8 gray or RGB."""
  rows, columns = _int(header, "Rows", 0), _int(header, "Columns", 0)
  samples, bits = _int(header, "SamplesPerPixel", 1), _int(header, "BitsStored", 0)
  allocated = _int(header, "BitsAllocated", 0)
  photometric = _safe_text(_text(header, "PhotometricInterpretation"), "?")
  if rows < 1 or columns < 1:
    raise frames.FrameError(f"{path}: the image has no Rows/Columns; the header is incomplete: "
                            "export the file again")
  if rows * columns > max_pixels:
    raise frames.FrameError(f"{path}: frames of {columns}x{rows} pixels exceed the limit of "
                            f"{max_pixels} pixels; crop or downscale the loop first")
  if allocated not in (8, 16) or not 1 <= bits <= allocated:
    raise frames.FrameError(f"{path}: {bits} bits stored in {allocated} allocated are not "
                            "supported (8 or 16 allocated are); export the loop as 8-bit")
  expected_samples = 1 if photometric in GRAY + (PALETTE,) else 3 if photometric in COLOUR else 0
  if samples != expected_samples:
    raise frames.FrameError(f"{path}: photometric interpretation {photometric} with {samples} "
                            "samples per pixel is not supported; export the loop as gray or RGB")
  window = (_float(header, "WindowCenter"), _float(header, "WindowWidth"))
  return PixelFormat(
      rows, columns, samples, photometric, bits, _int(header, "PixelRepresentation", 0) == 1,
      window if None not in window and window[1] >= 1 else None,
      (_float(header, "RescaleSlope", 1.0), _float(header, "RescaleIntercept", 0.0)),
      _palette(path, header) if photometric == PALETTE else None)


def _palette(path, header):
  """uint8 [2**bits, 3]: the RGB of each stored index through the file's palette tables."""
  bits = _int(header, "BitsStored", 8)
  indices = np.arange(2 ** bits, dtype=np.uint16 if bits > 8 else np.uint8)
  try:
    rgb = pixels.apply_color_lut(indices, header)
  except Exception as e:  # pylint: disable=broad-except
    raise frames.FrameError(f"{path}: cannot read the palette colour tables ({_reason(e)}); "
                            "export the loop as RGB") from None
  if rgb.dtype != np.uint8:
    rgb = _scale(rgb.astype(np.float64), 0.0, 65535.0)
  return rgb.reshape(-1, 3)


def _timing(header, n_frames):
  """(fps or NaN, per-frame times in s from a FrameTimeVector or None)."""
  fps = math.nan
  frame_time_ms = _float(header, "FrameTime")
  for rate in (1000.0 / frame_time_ms if frame_time_ms else None,
               _float(header, "CineRate"), _float(header, "RecommendedDisplayFrameRate")):
    if rate is not None and rate > 0:
      fps = rate
      break
  times = None
  try:
    vector = header.get("FrameTimeVector")
    vector = [float(v) for v in (vector if isinstance(vector, (list, tuple, MultiValue))
                                 else [vector])]
  except Exception:  # pylint: disable=broad-except
    vector = []
  if len(vector) in (n_frames, n_frames - 1) and n_frames > 1 and all(
      math.isfinite(v) and v >= 0 for v in vector):
    vector = ([0.0] if len(vector) < n_frames else []) + vector
    times = np.cumsum(vector) / 1000.0
    if not math.isfinite(fps) and times[-1] > 0:
      fps = (n_frames - 1) / times[-1]
  return fps, times


def _spacing_mm(header):
  """`(column, row)` mm per pixel from PixelSpacing, else the first ultrasound region in cm."""
  row, column = _float(header, "PixelSpacing", item=0), _float(header, "PixelSpacing", item=1)
  if row and column and row > 0 and column > 0:
    return (column, row)
  try:
    region = header.get("SequenceOfUltrasoundRegions")[0]
  except Exception:  # pylint: disable=broad-except
    return None
  if _int(region, "PhysicalUnitsXDirection") != 3 or _int(region, "PhysicalUnitsYDirection") != 3:
    return None
  dx, dy = _float(region, "PhysicalDeltaX"), _float(region, "PhysicalDeltaY")
  if dx and dy and abs(dx) > 0 and abs(dy) > 0:
    return (abs(dx) * 10.0, abs(dy) * 10.0)
  return None


# --------------------------------------------------------------------------------------------
# Pixels


def _decode_message(where, syntax, error):
  """One line for a frame pydicom could not decode (its message is not quoted)."""
  text = str(error)
  if "insufficient pixel data" in text or "less than expected" in text or isinstance(
      error, EOFError):
    what = "the pixel data ends inside this frame (the file is truncated)"
  elif "Unable to decode" in text or "plugin" in text:
    what = (f"cannot decode its {_syntax_name(syntax)} data (corrupt, or a variant the installed "
            "decoders do not handle)")
  else:
    what = f"cannot decode it ({_reason(error)}): the frame data is corrupt or truncated"
  return f"{where}: {what}; copy or export the file again"


def _scale(values, low, high):
  """float `values` in `[low, high]` -> uint8 0..255, linearly, rounded, clipped."""
  out = np.rint((values - low) * (255.0 / (high - low)))
  return np.clip(out, 0, 255).astype(np.uint8)


def _full_range(array, fmt):
  """Stored values over the full range of `fmt.bits_stored` -> uint8 (8 bits: unchanged)."""
  if array.dtype == np.uint8 and fmt.bits_stored <= 8:
    return array
  values = array.astype(np.float64)
  if fmt.signed:
    values += 2.0 ** (fmt.bits_stored - 1)
  return _scale(values, 0.0, 2.0 ** fmt.bits_stored - 1.0)


def _windowed(array, fmt):
  """Gray values through Rescale then the linear VOI window (PS3.3 C.11.2.1.2) -> uint8."""
  slope, intercept = fmt.rescale
  center, width = fmt.window
  values = array.astype(np.float64) * slope + intercept
  return _scale((values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else
                (values > center - 0.5).astype(np.float64), 0.0, 1.0)


def to_uint8(array, fmt, where="frame"):
  """A frame as pydicom decodes it ([H, W] gray or index, [H, W, 3] RGB; any integer type) ->
  uint8 [H, W, 1] gray or [H, W, 3] RGB, by the rules in the module docstring."""
  array = np.asarray(array)
  if array.dtype.byteorder not in ("=", "|"):
    array = array.astype(array.dtype.newbyteorder("="))
  if fmt.palette is not None:
    image = fmt.palette[np.clip(array.astype(np.int64), 0, len(fmt.palette) - 1)]
  elif array.ndim == 2:
    deep = fmt.bits_stored > 8  # 8-bit gray is what the scanner displayed: taken as stored
    image = _windowed(array, fmt) if deep and fmt.window else _full_range(array, fmt)
    if fmt.photometric == "MONOCHROME1":
      image = 255 - image
    image = image[..., None]
  elif array.ndim == 3 and array.shape[2] == 3:
    image = _full_range(array, fmt)
  else:
    raise frames.FrameError(f"{where}: decoded to an unexpected shape {array.shape}; export the "
                            "loop as gray or RGB")
  return np.ascontiguousarray(image)
