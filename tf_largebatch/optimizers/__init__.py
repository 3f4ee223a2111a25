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
