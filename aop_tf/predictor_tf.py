"""The predictors that run on TensorFlow: Keras checkpoints, SavedModels, and re-decoding.

`predictor.load` imports this module only for a training directory, a SavedModel or a decoding
override, so that a `.tflite` model runs without TensorFlow; the interface (`predictor.Predictor`)
and the TFLite predictor are in `aop_tf.predictor`.
"""

import contextlib

import numpy as np
import tensorflow as tf

from aop_tf import data
from aop_tf import model_dir as model_dir_lib
from aop_tf import predictor as predictor_lib
from aop_tf import serving

# The ops of the graphs aop_tf exports (every model variant: batch or group norm, softmax head,
# segmentation and tangent FH1, DARK), and pure math ops a variant may add. A SavedModel whose
# `serve_images` graph holds anything else (file I/O such as WriteFile or ReadFile, PyFunc, ...) is
# not run unless trusted: this guards against unexpected file and system access from a graph, not
# against a malicious TensorFlow kernel or a crafted checkpoint that exploits the loader itself.
ALLOWED_OPS = frozenset("""
Abs AddV2 All Any ArgMax ArgMin Assert Atan2 AvgPool BatchMatMulV2 BiasAdd Cast Ceil ConcatV2 Const
Conv2D Conv2DBackpropInput Cumsum DecodeBmp DecodeGif DecodeImage DecodeJpeg DecodePng
DepthwiseConv2dNative Einsum EnsureShape Equal Erf Exp ExpandDims Fill Floor FloorDiv FloorMod
FusedBatchNormV3 GatherNd GatherV2 Greater GreaterEqual Identity IdentityN If
ImageProjectiveTransformV3 IsFinite IsNan LeakyRelu Less LessEqual Log LogSoftmax LogicalAnd
LogicalNot LogicalOr MatMul Max MaxPool Maximum Mean Min Minimum MirrorPad Mul Neg NoOp NotEqual
OnesLike Pack Pad PadV2 PartitionedCall Placeholder Pow PreventGradient Prod Range Rank
ReadVariableOp RealDiv Reciprocal Relu Relu6 Reshape ResizeBilinear ResizeNearestNeighbor
ReverseV2 Round Rsqrt ScaleAndTranslate Select SelectV2 Shape Sigmoid Sign Size Slice Softmax
Softplus Split SplitV Sqrt Square SquaredDifference Squeeze StatefulPartitionedCall StatelessIf
StatelessWhile StopGradient StridedSlice Sub Sum Tanh TensorListElementShape TensorListFromTensor
TensorListGetItem TensorListLength TensorListReserve TensorListSetItem TensorListStack Tile TopKV2
Transpose Unpack Where While ZerosLike
""".split())


class KerasPredictor(predictor_lib.Predictor):
  """A Keras landmark model + `data.preprocess_image` + `codec.decode`, traced once.

  Args:
    model: the Keras model (input float32 [B, S, S, C] 0..255).
    codec: its `codec.HeatmapCodec`.
    path: where it came from (for reports).
    checkpoint: its checkpoint name (for reports).
  """
  kind = "keras"

  def __init__(self, model, codec, path="", checkpoint=None):
    super().__init__(path, codec, codec.heatmap_size)
    self.model = model
    self.checkpoint = checkpoint
    _, size, _, channels = model.input_shape
    self._run_prepared = tf.function(self._decode, autograph=False, input_signature=[
        tf.TensorSpec([None, size, size, channels], tf.float32), tf.TensorSpec([None, 2],
                                                                               tf.float32)])
    self._run_uint8 = tf.function(
        lambda images: self._decode(data.preprocess_image(images, size, channels),
                                    _sizes_of(images)),
        autograph=False, input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])

  def _decode(self, images, size_px):
    return self.codec.decode(self.model(images, training=False), size_px)

  def _run(self, images):
    return {k: v.numpy() for k, v in self._run_uint8(tf.constant(images)).items()}

  def predict_prepared(self, images, size_px):
    """Outputs for model inputs already prepared (`data.make_dataset`): float32 [B, S, S, C] 0..255
    and the original `(width, height)` [B, 2]."""
    out = self._run_prepared(tf.cast(images, tf.float32), tf.cast(size_px, tf.float32))
    return {k: v.numpy() for k, v in out.items()}

  def describe(self):
    return dict(super().describe(), checkpoint=self.checkpoint)


def _sizes_of(images):
  """`(width, height)` float32 [B, 2] of a batch [B, H, W, C] of one size."""
  shape = tf.shape(images)
  return tf.tile(tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)[None], [shape[0], 1])


@contextlib.contextmanager
def bfloat16_graphs(enabled=True):
  """oneDNN bfloat16 auto mixed precision for the TF functions called inside (when `enabled`).

  The setting is part of each call's configuration, so it holds for these calls only (not
  thread-safe: calls made meanwhile by other threads get it too)."""
  if not enabled:
    yield
    return
  key = "auto_mixed_precision_onednn_bfloat16"
  before = tf.config.optimizer.get_experimental_options().get(key, False)
  tf.config.optimizer.set_experimental_options({key: True})
  try:
    yield
  finally:
    tf.config.optimizer.set_experimental_options({key: before})


def graph_ops(function):
  """The op types of a concrete function's graph and of every function it calls."""
  graph_def = function.graph.as_graph_def()
  ops = {node.op for node in graph_def.node}
  for library_function in graph_def.library.function:
    ops |= {node.op for node in library_function.node_def}
  return ops


class SavedModelPredictor(predictor_lib.Predictor):
  """Runs a SavedModel's `serve_images` signature: its own resize, model and decoder.

  Args:
    path: the SavedModel folder.
    bfloat16: let oneDNN run the convolutions in bfloat16 (auto mixed precision): ~1.5-2x
      images/s on CPUs with AVX512-BF16 or AMX, landmarks within a fraction of a pixel
      (benchmarks/speed.py); TF leaves the graph float32 on other CPUs.
    trust_model: run it even if its graph holds ops outside `ALLOWED_OPS`.
  """
  kind = "saved_model"

  def __init__(self, path, bfloat16=False, trust_model=False):
    try:
      self._loaded = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: cannot load the SavedModel ({type(e).__name__}: "
                       f"{predictor_lib.first_line(e)}); re-export it with "
                       "`python -m aop_tf.export`.") from None
    if serving.SERVE_IMAGES not in self._loaded.signatures:
      raise ValueError(f"{path} has no {serving.SERVE_IMAGES!r} signature (has "
                       f"{sorted(self._loaded.signatures)}); export it with "
                       "`python -m aop_tf.export`.")
    self._fn = self._loaded.signatures[serving.SERVE_IMAGES]
    unknown = graph_ops(self._fn) - ALLOWED_OPS
    if unknown and not trust_model:
      raise ValueError(f"{path}: its {serving.SERVE_IMAGES} graph uses ops no aop_tf export "
                       f"uses ({', '.join(sorted(unknown))}), e.g. file or system access; not "
                       "running it. Pass --trust_model if you trust where it came from.")
    cells = self._fn.structured_outputs["heatmaps"].shape[1]
    self.spec = predictor_lib.export_spec(path)
    codec = None if self.spec is None else self.spec.heatmap_codec()
    super().__init__(path, codec, cells)
    self.bfloat16 = bool(bfloat16)

  def _run(self, images):
    with bfloat16_graphs(self.bfloat16):
      out = self._fn(images=tf.constant(images))
    return {k: out[k].numpy() for k in predictor_lib.OUTPUT_KEYS if k in out}

  def describe(self):
    return dict(super().describe(), signature=serving.SERVE_IMAGES)


class RedecodingPredictor(predictor_lib.Predictor):
  """Another predictor's heatmaps decoded with another codec (e.g. an export re-decoded with
  DARK). FH1 by tangent needs the segmentation output, which exports do not return."""

  def __init__(self, inner, codec):
    super().__init__(inner.path, codec, inner.heatmap_cells)
    self.inner = inner
    self.kind = inner.kind
    self.spec = inner.spec

  def _run(self, images):
    out = self.inner._run(images)  # pylint: disable=protected-access
    size = np.tile([[images.shape[2], images.shape[1]]], (len(images), 1)).astype(np.float32)
    decoded = self.codec.decode(tf.constant(out["heatmaps"]), size)
    return {k: np.asarray(v) for k, v in decoded.items()}

  def describe(self):
    return dict(self.inner.describe(), decode=super().describe()["decode"], redecoded=True)


def load_training_dir(path, checkpoint=None, decode=None):
  """The `KerasPredictor` of a training directory's checkpoint (`model_dir.resolve_checkpoint`),
  its codec changed by `decode` ({`HeatmapCodec` field: value}, see `predictor.load`)."""
  name, _ = model_dir_lib.resolve_checkpoint(path, checkpoint)
  model, spec = model_dir_lib.load_model(path, name)
  codec = predictor_lib.override(spec.heatmap_codec(), decode or {})
  if codec.fh1_method == "tangent" and spec.model.seg_classes <= 2:
    raise ValueError(f"fh1_method 'tangent' needs a segmentation head; {path} has "
                     f"seg_classes={spec.model.seg_classes}.")
  keras_predictor = KerasPredictor(model, codec, path, name)
  keras_predictor.spec = spec
  return keras_predictor
