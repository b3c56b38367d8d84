"""The training task: the U-Net of a run spec with its losses and optimizer, ready for `fit`.

`model.build_unet` is the architecture; this module puts the heads' losses (`losses`, scaled by the
codec's `heatmap_scale`) and the optimizer (`optim`) on it, as keras-hub's task classes do. With
an unlabeled split the model is `semi.MeanTeacher` (student + EMA teacher), compiled the same way.
"""

from aop_tf import losses
from aop_tf import model as model_lib
from aop_tf import optim
from aop_tf import semi


def build_compiled_model(spec, steps_per_epoch=1):
  """The model of `spec` (`config.RunSpec`), compiled with its loss(es) and optimizer.

  The learning rate is set before every step by `callbacks.LearningRateUpdater`;
  `steps_per_epoch` times the unlabeled weight's ramp-up of a semi-supervised run.
  """
  if spec.semi.unlabeled_split:
    model = semi.build(spec, steps_per_epoch)
  else:
    model = model_lib.build_unet(**spec.model_kwargs())
  loss_spec = spec.loss
  loss = {"heatmaps": losses.heatmap_loss(
      loss_spec.loss, spec.codec.heatmap_scale, loss_spec.foreground_weight,
      loss_spec.coord_loss_weight, loss_spec.aop_loss_weight, spec.heatmap_codec())}
  loss_weights = {"heatmaps": 1.0}
  if spec.model.seg_classes:
    loss["segmentation"] = losses.MaskedSegmentationLoss()
    loss_weights["segmentation"] = loss_spec.seg_loss_weight
  model.compile(optimizer=optim.make_optimizer(spec.optim), loss=loss, loss_weights=loss_weights,
                jit_compile=spec.run.jit_compile)
  return model
