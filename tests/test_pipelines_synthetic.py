"""Synthetic input: the real pipelines' structure, shapes and dtypes, deterministic
from the seed, no file or network; every shipped config builds in its smoke form,
and one config per family (files equal up to numbers) smoke-runs offline on it
(what ``tf-largebatch train --smoke`` does without the datasets)."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_largebatch import cli, config, strategy as strategy_lib
from tf_largebatch.pipelines import bert, cifar, synthetic, train

from test_pipelines_bert import PhaseRecorder, pretraining_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "tf_largebatch", "tpu_configs")
CIFAR = os.path.join(CONFIG_DIR, "resnet20_sngm_1024_v3-8.yaml")
BERT = os.path.join(CONFIG_DIR, "bert_large_vrlamb_64k-32k_v3-1024.yaml")


def specs(dataset):
    return tf.nest.map_structure(lambda s: (tuple(s.shape), s.dtype), dataset.element_spec)


def test_image_batches_match_the_real_pipeline(tmp_path):
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=["training.global_batch_size=8"])
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        real_train, real_eval = cifar.make_datasets(cfg)
    fake_train, fake_eval = synthetic.make_datasets(cfg)
    assert specs(fake_train) == specs(real_train) == (((8, 32, 32, 3), tf.float32), ((8, 10), tf.float32))
    assert specs(fake_eval) == specs(real_eval)
    images, labels = next(iter(fake_train))
    np.testing.assert_array_equal(np.sum(labels, -1), np.ones(8))  # one-hot
    assert abs(float(np.mean(images))) < 0.2 and abs(float(np.std(images)) - 1) < 0.2  # normalised


def test_bert_batches_match_the_real_pipeline(tmp_path):
    pretraining_records(tmp_path / "a.tfrecord", 8, 128, 20, seed=0)
    (cfg,) = config.load_config(BERT, smoke=True, overrides=[
        f"phases.0.data.train_files={tmp_path}/*.tfrecord", "training.global_batch_size=8"])[:1]
    real_train, _ = bert.make_datasets(cfg)
    fake_train, fake_eval = synthetic.make_datasets(cfg)
    assert specs(fake_train) == specs(real_train)
    assert specs(fake_eval) == specs(real_train)  # evaluated whenever training.eval_steps is set
    x, y, sw = next(iter(fake_train))
    length = np.sum(x["padding_mask"], -1)
    assert np.all(length >= 64) and np.all(length <= 128)
    for row in range(8):
        used = sw["mlm"][row].numpy() == 1
        positions = x["mask_positions"][row].numpy()[used]
        assert used.sum() == min(20, max(1, round(0.15 * length[row])))
        assert len(set(positions)) == len(positions) and np.all(positions > 0) and np.all(positions < length[row])
        assert np.all(x["mask_positions"][row].numpy()[~used] == 0) and np.all(y["mlm"][row].numpy()[~used] == 0)
        assert np.all(x["token_ids"][row].numpy()[length[row]:] == 0)
        segments = x["segment_ids"][row].numpy()
        assert set(segments[: length[row] // 2]) == {0} and set(segments[length[row] // 2: length[row]]) == {1}
    assert np.all(x["token_ids"].numpy() < 30522) and set(np.unique(y["nsp"])) <= {0, 1}


def test_batches_are_deterministic_from_the_seed():
    (cfg,) = config.load_config(CIFAR, smoke=True)
    first = [b[0].numpy() for b in synthetic.make_datasets(cfg)[0].take(3)]
    again = [b[0].numpy() for b in synthetic.make_datasets(cfg)[0].take(3)]
    (other,) = config.load_config(CIFAR, smoke=True, overrides=["training.seed=7"])
    different = next(iter(synthetic.make_datasets(other)[0]))[0].numpy()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[2], first[0])  # a fixed set of NUM_BATCHES = 2, repeated
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], different)


def test_smoke_falls_back_to_synthetic_only_where_data_is_missing(tmp_path):
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=[f"data.data_dir={tmp_path}/tfds"])
    (switched,) = synthetic.where_data_is_missing([cfg])
    assert switched.data.synthetic and not cfg.data.synthetic
    pretraining_records(tmp_path / "a.tfrecord", 4, 128, 20, seed=0)
    phases = config.load_config(BERT, smoke=True, overrides=[f"phases.0.data.train_files={tmp_path}/*.tfrecord"])
    assert [c.data.synthetic for c in synthetic.where_data_is_missing(phases)] == [False, True]  # phase 2: gs://


def test_smoke_with_synthetic_false_insists_on_real_data(tmp_path, capsys):
    code = cli.main(["train", "--config", CIFAR, "--smoke", "--set", "data.synthetic=false",
                     "--set", f"data.data_dir={tmp_path}/tfds", "--set", f"training.model_dir={tmp_path}/run"])
    assert code == 2
    assert "config error: data.name: 'cifar10' is not prepared in" in capsys.readouterr().err


# Every shipped file is parsed, validated and built in its smoke form (model,
# optimizer on the model's variables, schedule, synthetic input, one forward
# pass), and its full form's optimizer and schedule are built with the file's
# own numbers; the numbers themselves are checked against the papers' tables in
# test_config.py and test_pipelines_vrgd_cifar_configs.py. Training through the
# CLI's smoke path then runs once per family: files whose smoke configs are
# equal up to numbers (the batch, learning rate and warm-up of a table row)
# run the same code with other numbers, so one run of the family covers them.
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
# (SNGM, LARS and MSGD on ResNet-20 also train in test_pipelines_smoke.py on
# mocked TFDS data, BERT's phase 1 on TFRecords below; the ResNet-50 runs here are
# the only ResNet-50 training of the pipelines, test_pipelines_smoke.py checks
# the ImageNet input the VR-LARS config gets from TFDS on mock data.)


def name_of(path):
    return os.path.basename(path)[: -len(".yaml")]


def without_numbers(value):
    """``value`` with every number replaced by its type's name (booleans, strings and None kept)."""
    if isinstance(value, dict):
        return {key: without_numbers(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_numbers(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return type(value).__name__
    return value


def smoke_signature(path):
    """What a smoke run of ``path`` exercises: every phase's smoke config without its
    numbers, its name, its source and its output directory."""
    phases = []
    for cfg in config.load_config(path, smoke=True):
        values = config.to_dict(cfg)
        del values["name"], values["source"], values["training"]["model_dir"]
        phases.append(without_numbers(values))
    return json.dumps(phases, sort_keys=True)


def families(paths):
    """``{signature: [paths]}``: the files whose smoke runs differ only in numbers."""
    grouped = {}
    for path in paths:
        grouped.setdefault(smoke_signature(path), []).append(path)
    return grouped


FAMILIES = families(CONFIG_FILES)
TRAINED = sorted(paths[0] for paths in FAMILIES.values())


def test_families_differ_only_in_numbers_and_cover_every_model_and_optimizer():
    # The grouping is not vacuous: the files of a family share model,
    # optimizer (with the names of its arguments), phases and GSNR monitoring,
    # and the trained files cover every such combination shipped.
    def kind(path):
        configs = config.load_config(path, smoke=True)
        return tuple((c.model.name, c.optimizer.name, tuple(sorted(c.optimizer.args)), c.phase,
                      c.callbacks.gsnr_monitor is not None) for c in configs)

    assert {kind(p) for p in TRAINED} == {kind(p) for p in CONFIG_FILES}
    for paths in FAMILIES.values():
        assert len({kind(p) for p in paths}) == 1, [name_of(p) for p in paths]
    # Files that differ in more than numbers are in different families.
    vr, plain = (os.path.join(CONFIG_DIR, f"resnet56_{o}_4096_v3-8.yaml") for o in ("vrlamb", "lamb"))
    assert smoke_signature(vr) != smoke_signature(plain)
    assert smoke_signature(vr) == smoke_signature(os.path.join(CONFIG_DIR, "resnet56_vrlamb_256_v3-8.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=name_of)
def test_every_shipped_config_builds_in_smoke_form(path):
    for full in config.load_config(path):
        # The file's own numbers go into its schedule and optimizer.
        schedule = train.build_schedule(full)
        optimizer = train.build_optimizer(full)
        assert type(optimizer).__name__ == full.optimizer.name
        peak = full.schedule.learning_rate
        warmup = full.warmup_steps()
        assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)
        if warmup:
            assert float(schedule(0)) == pytest.approx(full.schedule.warmup_learning_rate, abs=1e-12)
    configs = config.load_config(path, smoke=True)
    strategy = strategy_lib.build_strategy(configs[0].strategy)  # as the runner does: VR needs its k replicas
    for cfg in configs:
        with strategy.scope():
            model = config.build_model(cfg)
            optimizer = train.build_optimizer(cfg)
            optimizer.build(model.trainable_variables)
        assert int(optimizer.iterations.numpy()) == 0 and len(optimizer.variables) > 1
        train_ds, eval_ds = synthetic.make_datasets(cfg)
        assert eval_ds is not None and specs(eval_ds) == specs(train_ds)
        x, y = next(iter(train_ds))[:2]
        outputs = model(x, training=False)
        tf.nest.assert_same_structure(outputs, y)
        for logits, labels in zip(tf.nest.flatten(outputs), tf.nest.flatten(y)):
            assert labels.shape in (logits.shape, logits.shape[:-1])  # one-hot or sparse labels
            assert np.all(np.isfinite(logits.numpy()))


def family_param(path):
    """The family's trained file; ResNet-50 (over 20 s each here) is marked slow."""
    (cfg, *_) = config.load_config(path, smoke=True)
    marks = [pytest.mark.slow] if cfg.model.name == "resnet50" else []
    return pytest.param(path, id=name_of(path), marks=marks)


# The BERT family's run is the two-phase test below, which also checks the
# hand-over between the phases (training BERT twice for two tests cost ~50 s).
BERT_FAMILY = next(p for p in TRAINED if config.load_config(p, smoke=True)[0].model.name == "bert")


def smoke_run(path, tmp_path, *sets):
    """``tf-largebatch train --config path --smoke`` into ``tmp_path/run``; returns the exit code."""
    settings = [f"training.model_dir={tmp_path}/run", "training.verbose=0", "callbacks.tensorboard=false", *sets]
    return cli.main(["train", "--config", path, "--smoke", *[a for s in settings for a in ("--set", s)]])


def check_smoke_run(path, tmp_path, out, synthetic):
    """Every phase's summary after :func:`smoke_run`; ``synthetic``: per phase, whether it fell back."""
    configs = config.load_config(path, smoke=True)
    assert len(configs) == len(synthetic)
    for cfg, fell_back in zip(configs, synthetic):
        directory = train.phase_dir(cfg).replace(cfg.training.model_dir, f"{tmp_path}/run")
        with open(os.path.join(directory, train.SUMMARY)) as f:
            summary = json.load(f)
        assert summary["synthetic_data"] is fell_back
        assert summary["optimizer_updates"] == cfg.total_steps() == 2
        assert summary["examples_per_second"] > 0 and summary["measured_steps"] == 1
        assert all(np.isfinite(v) for v in summary["final_logs"].values()), summary["final_logs"]
        assert "final logs after 2 optimizer updates" in out


@pytest.mark.parametrize("path", [family_param(p) for p in TRAINED if p != BERT_FAMILY])
def test_one_config_per_family_smoke_runs_offline(path, tmp_path, capsys):
    assert smoke_run(path, tmp_path) == 0
    check_smoke_run(path, tmp_path, capsys.readouterr().out, [True] * len(config.load_config(path, smoke=True)))


@pytest.mark.slow  # BERT in two phases on 2 replicas, twice the CLI: ~60 s at load 2.5
def test_bert_family_two_phases_phase_two_starts_from_phase_one_with_a_fresh_warmup(tmp_path, capsys, monkeypatch):
    """The BERT family's smoke run through the CLI, phase 1 on TFRecords (the real
    reader), phase 2 on synthetic input (a ``--set`` choosing data turns the
    fallback off, so phase 2 asks for it); phase 2 starts from phase 1's final
    weights with its own warm-up, and a rerun skips both."""
    pretraining_records(tmp_path / "seq128.tfrecord", 8, 128, 20, seed=1)
    recorder, returned = PhaseRecorder(), []
    real_run = train.run

    def run_recorded(configs, callbacks=()):  # the real runner, with the recorder added
        returned.append(real_run(configs, callbacks=[*callbacks, recorder]))
        return returned[-1]

    monkeypatch.setattr(train, "run", run_recorded)
    sets = [f"phases.0.data.train_files={tmp_path}/seq128.tfrecord", "phases.1.data.synthetic=true",
            "phases.0.schedule.learning_rate=0.01",
            "phases.1.schedule.learning_rate=0.02", "callbacks.gsnr_monitor.update_freq=1"]
    assert smoke_run(BERT_FAMILY, tmp_path, *sets) == 0
    check_smoke_run(BERT_FAMILY, tmp_path, capsys.readouterr().out, [False, True])
    summaries = returned[0]
    assert [c.data.seq_length for c in config.load_config(BERT_FAMILY, smoke=True)] == [128, 512]
    one, two = recorder.phases
    # Phase 2's first step sees exactly phase 1's final weights ...
    for before, after in zip(one["last_weights"], two["first_weights"]):
        np.testing.assert_array_equal(before, after)
    # ... with a new optimizer whose schedule starts again: warm-up from 0 to
    # phase 2's own peak (warmup_steps=1 in smoke mode), not phase 1's finished decay.
    assert one["first_iterations"] == 0 and two["first_iterations"] == 0
    assert one["learning_rates"] == pytest.approx([0.0, 0.01])
    assert two["learning_rates"] == pytest.approx([0.0, 0.02])
    # Position embeddings are sized for 512 in both phases.
    assert one["position_embedding"] == two["position_embedding"]
    assert any(512 in shape for shape in one["position_embedding"])
    assert [s["optimizer_steps"] for s in summaries] == [2, 2]
    assert summaries[1]["initial_weights"] == os.path.join(tmp_path, "run", "phase1_seq128", "final.weights.h5")
    for phase in ("phase1_seq128", "phase2_seq512"):  # VR-LAMB's GSNR statistics, per phase
        assert glob.glob(str(tmp_path / "run" / phase / "logs" / "gsnr" / "**" / "events.out.tfevents.*"),
                         recursive=True)
    with open(tmp_path / "run" / "phase2_seq512" / "summary.json") as f:
        assert json.load(f)["phase"] == "phase2_seq512"
    # A rerun of the finished command skips both phases instead of training again.
    assert smoke_run(BERT_FAMILY, tmp_path, *sets) == 0
    assert [s["skipped"] for s in returned[1]] == [True, True]
