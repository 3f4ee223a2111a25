"""The runner: the learning-rate clock in optimizer updates (Keras's optimizers
included), throughput in the summary, backups that survive a kill at any moment,
checkpoint retention and the best checkpoint, EMA weights for evaluation, the
runner's own config checks, and ResNet-50 v1.5."""

import json
import logging
import math
import os
import warnings

import keras
import numpy as np
import pytest

from tf_largebatch import config
from tf_largebatch import optimizers as tlb_optimizers
from tf_largebatch.pipelines import callbacks as callbacks_lib
from tf_largebatch.pipelines import models, throughput, train
from tf_largebatch.pipelines import summary as summary_lib
from tf_largebatch.pipelines.schedule_in_updates import ScheduleInUpdates
from distribute_utils import release_interrupted_fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSGD = os.path.join(ROOT, "tpu_configs", "resnet20_msgd_2048_v3-8.yaml")
SNGM = os.path.join(ROOT, "tpu_configs", "resnet20_sngm_1024_v3-8.yaml")


def warmup_cosine(step, peak, warmup, decay):
    """The schedule's formula (linear warm-up from 0, cosine to 0), in NumPy."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))


def smoke_configs(path, tmp_path, *overrides):
    return config.load_config(path, smoke=True, overrides=[
        f"training.model_dir={tmp_path}/run", "data.synthetic=true", "training.verbose=0", *overrides])


# ----------------------------------------------------------------- LR clock


def test_schedule_in_updates_drives_a_keras_optimizer_per_update():
    # Keras's SGD with 4 accumulation micro-steps, constant gradient 1: the
    # weight moves by -lr(u) at update u, with lr(u) the schedule at the update,
    # not at Keras's micro-step counter.
    schedule = keras.optimizers.schedules.PolynomialDecay(1.0, 3, end_learning_rate=0.25)
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer = keras.optimizers.SGD(ScheduleInUpdates(schedule, 4), gradient_accumulation_steps=4)
    for _ in range(4 * 4):
        optimizer.apply([keras.ops.ones(2)], [variable])
    lr = [max(1.0 - 0.75 * min(u, 3) / 3, 0.25) for u in range(4)]  # polynomial decay, power 1
    np.testing.assert_allclose(variable.numpy(), [-sum(lr)] * 2, rtol=1e-6)
    restored = ScheduleInUpdates.from_config(ScheduleInUpdates(schedule, 4).get_config())
    assert float(restored(11)) == pytest.approx(lr[2])


ONE_DEVICE = ["strategy.type=one_device", "strategy.num_cpu_replicas=null"]


@pytest.mark.parametrize("path, expected_class, strategy", [(MSGD, "SGD", ONE_DEVICE), (SNGM, "SNGM", [])],
                         ids=["keras-SGD-one-device", "SNGM-2-replicas"])
def test_final_learning_rate_is_the_schedule_at_the_last_update(path, expected_class, strategy, tmp_path):
    # 6 updates of 4 micro-steps: warm-up 2, cosine over 4. Keras's own SGD
    # would reach the end of the cosine after 6 micro-steps without the clock fix.
    (cfg,) = smoke_configs(path, tmp_path, *strategy, "training.steps=6", "training.steps_per_loop=3",
                           "training.global_batch_size=16", "training.gradient_accumulation_steps=4",
                           "schedule.name=warmup_cosine", "schedule.learning_rate=0.5", "schedule.warmup_steps=2",
                           "callbacks.tensorboard=false", "callbacks.checkpoints=false", "training.eval_steps=0")
    (summary,) = train.run([cfg])
    assert summary["optimizer"] == expected_class
    assert summary["optimizer_updates"] == 6
    assert summary["final_learning_rate"] == pytest.approx(warmup_cosine(5, 0.5, 2, 4), rel=1e-5)
    # Throughput of the second loop (the first includes compilation).
    assert summary["measured_steps"] == 3
    assert summary["examples_per_second"] == pytest.approx(16 / summary["seconds_per_step"])


def test_loop_timer_leaves_out_the_first_loop():
    timer = throughput.LoopTimer(updates_per_loop=10, examples_per_update=256)
    assert timer.rates() == {"seconds_per_step": None, "examples_per_second": None, "measured_steps": 0}
    timer.loop_seconds = [30.0, 2.0, 3.0]
    rates = timer.rates()
    assert rates["seconds_per_step"] == pytest.approx(0.25)
    assert rates["examples_per_second"] == pytest.approx(1024.0)
    assert rates["measured_steps"] == 20


# ------------------------------------------------------------------ backups


class Interrupt(keras.callbacks.Callback):
    """Raises at the start of loop ``at_loop`` (as a kill would stop the run)."""

    def __init__(self, at_loop):
        super().__init__()
        self.at_loop = at_loop

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_loop:
            raise RuntimeError("killed")


def interrupted_run(tmp_path):
    cfgs = smoke_configs(SNGM, tmp_path, "training.steps=4", "callbacks.tensorboard=false")
    with pytest.raises(RuntimeError, match="killed"):
        train.run(cfgs, callbacks=[Interrupt(at_loop=3)])
    release_interrupted_fit()
    backup = tmp_path / "run" / "backup"
    # tf.train.CheckpointManager records the newest two loops (the loop number is in each).
    recorded = train.LoopBackup(str(backup)).backups()
    assert [os.path.basename(p) for p in recorded] == ["ckpt-3", "ckpt-2"]
    return cfgs, backup


def test_a_damaged_newest_backup_resumes_from_the_previous_one(tmp_path, caplog):
    cfgs, backup = interrupted_run(tmp_path)
    # Loop 3's recorded backup lost half of its data (a damaged disk, a partial copy).
    (newest,) = backup.glob("ckpt-3.data-*")
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="tf_largebatch"):
        (summary,) = train.run(cfgs)
    assert f"backup {backup / 'ckpt-3'} is unreadable" in caplog.text
    assert summary["started_at_loop"] == 2
    assert summary["optimizer_updates"] == 4  # 2 restored + 2 rerun, never more


def test_a_kill_while_a_backup_is_written_loses_nothing(tmp_path):
    cfgs, backup = interrupted_run(tmp_path)
    # A later kill while loop 4's backup was being written: its files exist, half
    # written, but the manager's state file (replaced atomically once a save is
    # complete) does not name it.
    (backup / "ckpt-4.index").write_bytes(b"half an index")
    (backup / "ckpt-4.data-00000-of-00001").write_bytes(b"half the data")
    (summary,) = train.run(cfgs)
    assert summary["started_at_loop"] == 3
    assert summary["optimizer_updates"] == 4


# -------------------------------------------------------------- checkpoints


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.val_losses, self.weights, self.trainable, self.eval_trainable = [], [], [], []

    def on_test_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.eval_trainable.append([v.numpy().copy() for v in self.model.trainable_weights])

    def on_epoch_end(self, epoch, logs=None):
        self.val_losses.append(logs["val_loss"])
        self.weights.append([w.copy() for w in self.model.get_weights()])
        self.trainable.append([v.numpy().copy() for v in self.model.trainable_weights])


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_retention_and_the_best_checkpoint(tmp_path):
    cfgs = smoke_configs(SNGM, tmp_path, "training.steps=4", "callbacks.max_to_keep=2",
                         "schedule.learning_rate=0.5", "callbacks.tensorboard=false")
    record = Record()
    (summary,) = train.run(cfgs, callbacks=[record])
    run = tmp_path / "run"
    # tf.train.CheckpointManager keeps the newest two loops; the loop number is in the checkpoint.
    manager_files = sorted(n for n in os.listdir(run / "checkpoints") if n.startswith("ckpt-"))
    assert sorted({n.split(".")[0] for n in manager_files}) == ["ckpt-3", "ckpt-4"]
    assert "best.weights.h5" in os.listdir(run / "checkpoints")
    model = train.build_model(cfgs[0])
    assert callbacks_lib.restore_loop_checkpoint(model, str(run / "checkpoints" / "ckpt-4")) == 4
    assert_same_weights(model.get_weights(), record.weights[-1])
    model.load_weights(str(run / "checkpoints" / "best.weights.h5"))
    assert_same_weights(model.get_weights(), record.weights[int(np.argmin(record.val_losses))])
    # The final model is saved whole too, and loads without custom objects.
    loaded = keras.saving.load_model(str(run / "final.keras"))
    assert_same_weights(loaded.get_weights(), record.weights[-1])
    assert type(loaded.optimizer).__name__ == "SNGM"
    with open(run / "summary.json") as f:
        assert json.load(f)["optimizer_updates"] == 4


@pytest.mark.parametrize("optimizer", ["SGD", "VRMomentum"])
def test_evaluation_uses_the_ema_weights(optimizer, tmp_path):
    # ema_momentum 1 - 1e-6: the moving average stays at its first value (the
    # weights after update 1) up to 1e-6 of the second update, so loop 2's evaluation
    # sees loop 1's trainable weights (batch-norm statistics are not averaged). A VR optimizer keeps the EMA
    # itself (its inner optimizer has none): the runner must not look inside it.
    cfgs = smoke_configs(MSGD, tmp_path, f"optimizer.name={optimizer}", "optimizer.args.use_ema=true",
                         "optimizer.args.ema_momentum=0.999999", "schedule.learning_rate=0.5",
                         "callbacks.tensorboard=false")
    record = Record()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (summary,) = train.run(cfgs, callbacks=[record])
    # fit is told not to shuffle the datasets (they shuffle themselves): no Keras warning.
    assert not [w for w in caught if "shuffle" in str(w.message)], [str(w.message) for w in caught]
    assert summary["optimizer"] == optimizer
    assert (summary["optimizer_steps"], summary["optimizer_updates"], summary["skipped_updates"]) == (2, 2, 0)
    # SwapEMAWeights swaps by addition and subtraction: equal to float32 round-off.
    assert len(record.eval_trainable[1]) == len(record.trainable[0])
    for during_eval, first in zip(record.eval_trainable[1], record.trainable[0]):
        np.testing.assert_allclose(during_eval, first, rtol=1e-5, atol=1e-6)
    assert max(np.abs(e - w).max() for e, w in zip(record.eval_trainable[1], record.trainable[1])) > 1e-3


def test_keras_accumulation_under_mirrored_replicas_is_refused_before_any_strategy(tmp_path):
    # Keras 3's own gradient accumulation all-reduces inside a tf.cond, which
    # MirroredStrategy cannot run ("merge_call called while defining a new graph").
    # The config says its replicas: refused when loaded, before anything is built.
    with pytest.raises(config.ConfigError, match=r"^training.gradient_accumulation_steps: Keras's SGD cannot "
                                                 r"accumulate gradients over 2 MirroredStrategy replicas"):
        smoke_configs(MSGD, tmp_path, "training.global_batch_size=8", "training.gradient_accumulation_steps=2")
    assert not (tmp_path / "run").exists()


def test_runner_config_errors_name_the_key_when_loaded(tmp_path):
    with pytest.raises(config.ConfigError, match=r"^callbacks.best_metric: 'val_top5_accuracy' is not a metric"):
        smoke_configs(SNGM, tmp_path, "callbacks.best_metric=val_top5_accuracy")
    with pytest.raises(config.ConfigError, match=r"^callbacks.profile_batch: needs callbacks.tensorboard: true"):
        smoke_configs(SNGM, tmp_path, "callbacks.profile_batch=2", "callbacks.tensorboard=false")
    with pytest.raises(config.ConfigError, match=r"^callbacks.max_to_keep: "):
        smoke_configs(SNGM, tmp_path, "callbacks.max_to_keep=0")


# --------------------------------------------------------------- ResNet-50


def strided_convolutions(model):
    """``{(kernel size, stride)}`` of the strided convolutions inside the stages (not the stem)."""
    layers = []
    for layer in model.layers:
        layers.extend(getattr(layer, "layers", [layer]))
    return sorted((layer.name, layer.kernel_size[0]) for layer in layers
                  if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2) and layer.kernel_size != (7, 7))


@pytest.mark.parametrize("version, residual_kernel", [("v1.5", 3), ("v1", 1)])
def test_resnet50_puts_the_stride_where_its_version_says(version, residual_kernel):
    model = models.resnet50(num_classes=10, version=version, image_size=64)
    strided = strided_convolutions(model)
    # Three stages halve the resolution; each in its first block's residual
    # branch (3x3 in v1.5, first 1x1 in v1) and in its projection shortcut (1x1).
    assert len(strided) == 6
    assert sorted(kernel for _, kernel in strided) == sorted([residual_kernel] * 3 + [1] * 3)
    assert model.output.shape == (None, 10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # 23.5 M without the 1000-class head; v1 has conv biases, v1.5 has none.
    assert trainable == {"v1.5": 23_528_522, "v1": 23_555_082}[version]


def test_resnet50_rejects_an_unknown_version():
    with pytest.raises(ValueError, match=r"`version` must be one of v1.5, v1. Received: version='v2'"):
        models.resnet50(version="v2")


@pytest.mark.parametrize("make", [
    lambda: tlb_optimizers.VRMomentum(learning_rate=0.1, gradient_accumulation_steps=2),
    lambda: tlb_optimizers.SNGM(learning_rate=0.1, gradient_accumulation_steps=2),
    lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
], ids=["VRMomentum", "SNGM", "keras-LossScaleOptimizer"])
def test_the_summary_counts_steps_and_applied_updates_alike_for_every_optimizer(make):
    # Two steps, the second with a non-finite gradient: 2 steps, 1 update applied.
    # A VR optimizer is counted as itself, not by its inner optimizer.
    optimizer = make()
    variable = keras.Variable(np.ones(3, np.float32))
    micro_steps = 1 if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else 2
    for value in (1.0, np.nan):
        for i in range(micro_steps):
            optimizer.apply([keras.ops.convert_to_tensor(np.full(3, value * (i + 1), np.float32))], [variable])
    trains = callbacks_lib.training_optimizer(optimizer)
    steps, applied, skipped = summary_lib.update_counts(trains)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Keras's loss scaling skips the step without counting it in the inner optimizer.
        assert (steps, applied, skipped) == (1, 1, 0)
    else:
        assert (steps, applied, skipped) == (2, 1, 1)
