"""Small DICOM Part-10 files for the tests, written with pydicom from numpy images.

`write_dicom(path, frames, ...)` writes one file (a single frame, or a multi-frame cine loop) in
any transfer syntax that an encoder installed here can produce:

| transfer syntax | encoder |
|---|---|
| Implicit / Explicit VR Little Endian, Explicit VR Big Endian, Deflated | pydicom (native) |
| RLE Lossless | pydicom's own RLE encoder |
| JPEG 2000 Lossless and JPEG 2000 (lossy) | pylibjpeg-openjpeg, through `Dataset.compress` |
| JPEG Baseline (8-bit), and the same stream under the JPEG Extended UID | OpenCV (libjpeg-turbo) |
| JPEG Lossless SV1 and JPEG Lossless (process 14) | `encode_jpeg_lossless`, below |

No JPEG-LS encoder is installed (pyjpegls / CharLS are not dependencies) and OpenCV writes no
12-bit JPEG: those decoders are tested with the files pydicom ships (`pydicom_file`).

The header carries fake patient attributes (`PATIENT`) unless `patient=False`; every value holds
one of `SECRET_MARKERS`, so a test can assert that none of them leaks into a message or a log.
"""

import os

import cv2
import numpy as np
import pydicom
from pydicom import encaps
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)
PRIVATE_SYNTAX = "1.2.3.4.5.6.7.8.9.1"  # a transfer syntax no decoder knows

PATIENT = {
    "PatientName": "Doe^Jane^SECRET",
    "PatientID": "PID-SECRET-123",
    "PatientBirthDate": "19800101",
    "AccessionNumber": "ACC-SECRET",
    "OtherPatientIDs": "OPID-SECRET",
    "InstitutionName": "SECRET General Hospital",
    "ReferringPhysicianName": "Ref^SECRET",
    "StudyID": "SID-SECRET",
    "StudyDescription": "SECRET study",
}
SECRET_MARKERS = ("SECRET", "PID-", "19800101", "Doe^Jane")

NATIVE = (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian,
          uids.DeflatedExplicitVRLittleEndian)
LOSSLESS_ENCAPSULATED = (uids.RLELossless, uids.JPEG2000Lossless, uids.JPEGLosslessSV1,
                         uids.JPEGLossless)
LOSSY = (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEG2000)
JPEG_8BIT = (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit)


def write_dicom(path, frames, photometric="MONOCHROME2", bits=8,
                transfer_syntax=uids.ExplicitVRLittleEndian, patient=True, pixel_spacing=None,
                us_region_spacing_cm=None, fps=None, cine_rate=None, display_fps=None,
                frame_time_vector_ms=None, window=None, palette=None, jpeg_quality=95, j2k_cr=10,
                bad_frames=()):
  """Writes `frames` as a DICOM file at `path`; returns `path`.

  Args:
    frames: a list of arrays, all one shape: gray [H, W] (or [H, W, 1]) stored values (uint8 for
      `bits` 8, uint16 for 16), or RGB [H, W, 3]; for `PALETTE COLOR`, uint8 indices.
    photometric: MONOCHROME1 / MONOCHROME2 (stored as given), RGB, YBR_FULL (converted from the
      RGB frames), YBR_FULL_422 (native: converted and subsampled; JPEG: what the codec does) or
      PALETTE COLOR (with `palette`, uint8 [256, 3], stored as 16-bit LUTs).
    transfer_syntax: a UID of `NATIVE`, `LOSSLESS_ENCAPSULATED` or `LOSSY`.
    pixel_spacing: `(row, column)` mm: DICOM's PixelSpacing order.
    us_region_spacing_cm: `(x, y)` cm per pixel: one ultrasound region calibrated in cm.
    fps: written as FrameTime (ms); `cine_rate`: CineRate; `display_fps`:
      RecommendedDisplayFrameRate; `frame_time_vector_ms`: FrameTimeVector.
    window: `(center, width)`.
    jpeg_quality: OpenCV's JPEG quality; `j2k_cr`: JPEG 2000 (lossy) compression ratio.
    bad_frames: indices of frames whose compressed data is replaced by zeros (encapsulated only).
  """
  stack = np.stack([np.asarray(f) for f in frames])
  if stack.ndim == 4 and stack.shape[-1] == 1:
    stack = stack[..., 0]
  ds = _dataset(US_MULTIFRAME if len(frames) > 1 else US_IMAGE, "US", patient)
  _image_module(ds, stack, photometric, bits)
  _timing(ds, len(frames), fps, cine_rate, display_fps, frame_time_vector_ms)
  _spacing(ds, pixel_spacing, us_region_spacing_cm, stack.shape[1:3])
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  if palette is not None:
    _palette(ds, palette)
  _pixel_data(ds, stack, photometric, transfer_syntax, jpeg_quality, j2k_cr, bad_frames)
  _save(ds, path)
  return path


def _dataset(sop_class, modality, patient):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = uids.generate_uid()
  meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID = uids.generate_uid()
  ds.SeriesInstanceUID = uids.generate_uid()
  ds.Modality = modality
  if patient:
    for keyword, value in PATIENT.items():
      setattr(ds, keyword, value)
  return ds


def _image_module(ds, stack, photometric, bits):
  ds.Rows, ds.Columns = stack.shape[1:3]
  ds.SamplesPerPixel = 3 if stack.ndim == 4 else 1
  if ds.SamplesPerPixel == 3:
    ds.PlanarConfiguration = 0
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 8 if bits <= 8 else 16
  ds.BitsStored = bits
  ds.HighBit = bits - 1
  ds.PixelRepresentation = 0
  if len(stack) > 1:
    ds.NumberOfFrames = len(stack)


def _timing(ds, n_frames, fps, cine_rate, display_fps, frame_time_vector_ms):
  if fps is not None:
    ds.FrameTime = round(1000.0 / fps, 6)
    ds.FrameIncrementPointer = 0x00181063
  if cine_rate is not None:
    ds.CineRate = int(cine_rate)
  if display_fps is not None:
    ds.RecommendedDisplayFrameRate = int(display_fps)
  if frame_time_vector_ms is not None:
    assert len(frame_time_vector_ms) == n_frames
    ds.FrameTimeVector = [float(t) for t in frame_time_vector_ms]
    ds.FrameIncrementPointer = 0x00181065


def _spacing(ds, pixel_spacing, us_region_spacing_cm, size_hw):
  if pixel_spacing is not None:
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
  if us_region_spacing_cm is not None:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = size_hw[1] - 1, size_hw[0] - 1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = (float(v) for v in us_region_spacing_cm)
    ds.SequenceOfUltrasoundRegions = Sequence([region])


def _palette(ds, palette):
  palette = np.asarray(palette, np.uint16) * 257
  for channel, name in enumerate(("Red", "Green", "Blue")):
    setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
    setattr(ds, f"{name}PaletteColorLookupTableData",
            palette[:, channel].astype("<u2").tobytes())


def _native_bytes(stack, photometric, big_endian):
  """The stored bytes of `stack` (RGB converted to `photometric`), in the file's byte order."""
  if photometric in ("YBR_FULL", "YBR_FULL_422"):
    stack = pydicom.pixels.convert_color_space(stack, "RGB", "YBR_FULL")
  if photometric == "YBR_FULL_422":
    # PS3.3 C.7.6.3.1.2: Y1 Y2 Cb Cr for each horizontal pair (averaged chroma).
    pairs = stack.reshape(stack.shape[0], stack.shape[1], -1, 2, 3).astype(np.uint16)
    chroma = (pairs[..., 0, 1:] + pairs[..., 1, 1:] + 1) // 2
    stack = np.concatenate([pairs[..., 0, :1], pairs[..., 1, :1], chroma], -1)
    stack = stack.astype(np.uint8)
  dtype = stack.dtype.newbyteorder(">" if big_endian else "<")
  data = stack.astype(dtype).tobytes()
  return data + b"\0" * (len(data) % 2)


def _pixel_data(ds, stack, photometric, syntax, jpeg_quality, j2k_cr, bad_frames):
  big_endian = syntax == uids.ExplicitVRBigEndian
  ds.file_meta.TransferSyntaxUID = syntax
  if syntax in NATIVE:
    ds.PixelData = _native_bytes(stack, photometric, big_endian)
    ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"
    return
  if syntax in (uids.RLELossless, uids.JPEG2000Lossless, uids.JPEG2000):
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.PixelData = _native_bytes(stack, photometric, False)
    options = {"j2k_cr": [j2k_cr]} if syntax == uids.JPEG2000 else {}
    plugin = "pydicom" if syntax == uids.RLELossless else "pylibjpeg"
    ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False, **options)
    encoded = list(encaps.generate_frames(ds.PixelData, number_of_frames=len(stack)))
  elif syntax in JPEG_8BIT:
    encoded = [_encode_jpeg(frame, jpeg_quality) for frame in stack]
  elif syntax in (uids.JPEGLosslessSV1, uids.JPEGLossless):
    encoded = [encode_jpeg_lossless(frame, ds.BitsStored) for frame in stack]
  else:
    raise ValueError(f"no encoder for {syntax}")
  encoded = [b"\0" * len(e) if i in bad_frames else e for i, e in enumerate(encoded)]
  ds.PixelData = encaps.encapsulate(encoded, has_bot=True)
  ds["PixelData"].VR = "OB"
  ds["PixelData"].is_undefined_length = True


def _encode_jpeg(frame, quality):
  """uint8 gray [H, W] or RGB [H, W, 3] -> JPEG baseline bytes (colour as YCbCr 4:2:2)."""
  params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
  if frame.ndim == 3:
    frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
  ok, data = cv2.imencode(".jpg", frame, params)
  assert ok
  return data.tobytes()


def encode_jpeg_lossless(image, bits):
  """uint8/uint16 [H, W] or [H, W, C] -> a JPEG lossless codestream (ITU T.81 process 14, first-
  order prediction: selection value 1, point transform 0; components interleaved, one Huffman
  table in which difference category k has the 5-bit code k)."""
  x = np.asarray(image).astype(np.int64)
  x = x[..., None] if x.ndim == 2 else x
  height, width, channels = x.shape
  pred = np.empty_like(x)
  pred[0, 0] = 1 << (bits - 1)
  pred[0, 1:] = x[0, :-1]
  pred[1:, 0] = x[:-1, 0]
  pred[1:, 1:] = x[1:, :-1]
  diff = (x - pred) & 0xFFFF  # differences are taken modulo 2**16 (T.81 H.1.2.1)
  diff = np.where(diff >= 0x8000, diff - 0x10000, diff).ravel()
  category = np.zeros(diff.shape, np.int64)
  for k in range(16):
    category[np.abs(diff) >= (1 << k)] = k + 1
  n_extra = np.where(category == 16, 0, category)
  extra = np.where(diff >= 0, diff, diff - 1) & ((1 << n_extra) - 1)
  value = (category << n_extra) | extra
  length = 5 + n_extra
  shifts = np.arange(20, -1, -1)
  bits_2d = ((value[:, None] >> shifts) & 1).astype(np.uint8)
  stream = bits_2d[shifts[None, :] < length[:, None]]
  stream = np.concatenate([stream, np.ones(-len(stream) % 8, np.uint8)])
  scan = np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")
  sof = bytes([0xFF, 0xC3]) + (8 + 3 * channels).to_bytes(2, "big") + bytes([bits]) + (
      height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([channels])) + b"".join(
          bytes([c + 1, 0x11, 0]) for c in range(channels))
  counts = [0] * 16
  counts[4] = 17
  dht = bytes([0xFF, 0xC4, 0, 36, 0x00]) + bytes(counts) + bytes(range(17))
  sos = bytes([0xFF, 0xDA]) + (6 + 2 * channels).to_bytes(2, "big") + bytes([channels]) + (
      b"".join(bytes([c + 1, 0x00]) for c in range(channels))) + bytes([1, 0, 0])
  return b"\xff\xd8" + sof + dht + sos + scan + b"\xff\xd9"


def _save(ds, path):
  syntax = uids.UID(ds.file_meta.TransferSyntaxUID)
  if syntax == uids.ExplicitVRBigEndian:
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
  else:
    ds.save_as(path, enforce_file_format=True)


def write_private_syntax(path, frame):
  """A valid file whose transfer syntax UID is a private one (`PRIVATE_SYNTAX`), stored as
  Explicit VR Little Endian."""
  write_dicom(path, [frame])
  with open(path, "rb") as f:
    raw = f.read()
  old = uids.ExplicitVRLittleEndian.encode()
  assert raw.count(old) == 1 and len(PRIVATE_SYNTAX) == len(old)
  new = PRIVATE_SYNTAX.encode()  # same length: the group length stays right
  with open(path, "wb") as f:
    f.write(raw.replace(old, new))
  return path


def write_sr(path, patient=True):
  """A Basic Text SR: a DICOM object without pixel data."""
  ds = _dataset(BASIC_TEXT_SR, "SR", patient)
  ds.ValueType = "CONTAINER"
  ds.ContinuityOfContent = "SEPARATE"
  ds.CompletionFlag = "COMPLETE"
  ds.VerificationFlag = "UNVERIFIED"
  _save(ds, path)
  return path


def write_dicomdir(path, patient=True):
  """A minimal DICOMDIR (a media directory index, one patient record)."""
  ds = _dataset(MEDIA_DIRECTORY, "OT", False)
  del ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID
  ds.FileSetID = "TEST"
  ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
  ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
  ds.FileSetConsistencyFlag = 0
  record = Dataset()
  record.DirectoryRecordType = "PATIENT"
  record.OffsetOfTheNextDirectoryRecord = 0
  record.RecordInUseFlag = 0xFFFF
  record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
  if patient:
    record.PatientName, record.PatientID = PATIENT["PatientName"], PATIENT["PatientID"]
  ds.DirectoryRecordSequence = Sequence([record])
  _save(ds, path)
  return path


def truncate(path, drop_bytes):
  """Cuts the last `drop_bytes` bytes off the file (pixel data shorter than the header says)."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - drop_bytes)
  return path


def pydicom_file(name):
  """The path of a test file shipped with pydicom (`pydicom/data/test_files`)."""
  from pydicom.data import get_testdata_file  # pylint: disable=import-outside-toplevel
  return get_testdata_file(name)
