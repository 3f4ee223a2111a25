"""Optimizers for large-batch training (Keras 3, TensorFlow backend)."""

from tf_largebatch.optimizers.base import LargeBatchOptimizer
from tf_largebatch.optimizers.curvature import MCLR, PercentDelta
from tf_largebatch.optimizers.lamb import LAMB
from tf_largebatch.optimizers.lars import LARS
from tf_largebatch.optimizers.loss_scale import LossScaleOptimizer
from tf_largebatch.optimizers.layerwise import LayerwiseAdagrad, LayerwiseAdam, LayerwiseRMSprop, LayerwiseSGD
from tf_largebatch.optimizers.sngm import SNGM
from tf_largebatch.optimizers.vr import VR, VRSGD, VRAdam, VRLAMB, VRLARS, VRMomentum
from tf_largebatch.optimizers.adascale import AdaScale, StopAtScaleInvariantSteps
from tf_largebatch.optimizers import registry
from tf_largebatch.optimizers.lookup import register_plain_names

#: ``keras.optimizers.get("SNGM")``, ``model.compile(optimizer="sngm")``, ... (see :mod:`.lookup`):
#: every optimizer of the registry that trains.
PLAIN_NAMES = register_plain_names(registry.classes(registry.PACKAGE).values())
