"""tf_largebatch: large-batch training optimizers and recipe for TensorFlow/Keras 3.

Importing the package registers every optimizer, schedule and layer with Keras's
serialization, so ``keras.saving.load_model`` finds them.
"""

__version__ = "0.1.0"

from tf_largebatch import (  # noqa: E402,F401
    batch_size_schedule,
    callbacks,
    layers,
    losses,
    optimizers,
    scaling,
    schedules,
)
from tf_largebatch.optimizers import (  # noqa: E402,F401
    LAMB,
    LARS,
    MCLR,
    SNGM,
    VR,
    VRSGD,
    LayerwiseAdagrad,
    LayerwiseAdam,
    LayerwiseRMSprop,
    LayerwiseSGD,
    PercentDelta,
    VRAdam,
    VRLAMB,
    VRLARS,
    VRMomentum,
)
