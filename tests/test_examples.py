"""Every script in examples/ runs at its tiny default, in a fresh process, on the CPU.

Each example builds its own strategy (MirroredStrategy over the CPU here), model,
optimizer and data, so it runs as a user runs it: ``python examples/x.py``, with only
``--model-dir`` pointed at a scratch directory. The checks are what the example
promises: it finishes, the optimizer made its updates, and its checkpoints and
TensorBoard events exist. No example downloads anything at its default (synthetic
data); the real-data flags are the datasets' own TFDS / KerasHub loaders.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def _event_files(directory):
    return list(pathlib.Path(directory).rglob("events.out.tfevents.*"))


def test_every_example_is_run_by_this_file():
    tested = set(re.findall(r'"(\w+\.py)"', pathlib.Path(__file__).read_text(encoding="utf-8")))
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested


@pytest.mark.slow   # KerasHub import, a VR-LAMB step traced under fit: ~25 s of CPU
def test_bert_pretraining_vrlamb_with_fit(tmp_path):
    out = _run("bert_pretraining_vrlamb.py", "--model-dir", str(tmp_path), cwd=tmp_path)
    assert "fit: 4 VR-LAMB updates" in out, out
    assert _event_files(tmp_path / "gsnr"), "GSNRMonitor wrote no events"


@pytest.mark.slow   # the strategy.run loop on 2 logical CPUs: ~45 s of CPU
def test_bert_pretraining_vrlamb_custom_loop_on_two_replicas(tmp_path):
    out = _run("bert_pretraining_vrlamb.py", "--loop", "custom", "--cpu-replicas", "2", "--steps", "2",
               "--warmup-steps", "1", "--model-dir", str(tmp_path), cwd=tmp_path)
    assert "2 replica(s) x 2 micro-batches: k = 4" in out and "custom: 2 VR-LAMB updates" in out, out
    assert re.findall(r"^update (\d+):", out, flags=re.M) == ["1", "2"], out
    assert (tmp_path / "checkpoints" / "ckpt-2.index").exists()


@pytest.mark.slow   # keras.applications.ResNet50 (25M parameters) traced on the CPU: ~60 s of CPU
def test_resnet50_lars(tmp_path):
    out = _run("resnet50_lars.py", "--model-dir", str(tmp_path), cwd=tmp_path)
    assert "lars: 4 updates" in out, out
    assert (tmp_path / "final.keras").exists() and _event_files(tmp_path / "gsnr")


@pytest.mark.slow   # ~25 s of CPU
def test_resnet20_cifar10_sngm(tmp_path):
    out = _run("resnet20_cifar10_sngm.py", "--model-dir", str(tmp_path), cwd=tmp_path)
    assert "ResNet-20 with SNGM: 8 updates" in out, out
    assert (tmp_path / "epoch_002.keras").exists() and _event_files(tmp_path / "gsnr")


def test_vr_linear_regression(tmp_path):
    out = _run("vr_linear_regression.py", "--steps", "5", "--learning-rates", "0.1,0.3", "--json", str(tmp_path / "rows.json"), cwd=tmp_path)
    assert "VR-SGD (upper 10)" in out and (tmp_path / "rows.json").exists(), out
