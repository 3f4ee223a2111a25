"""A worker dies mid-run; both restart with the same command; training ends where
an uninterrupted run ends.

Two ``MultiWorkerMirroredStrategy`` workers on localhost (``multiworker_fault_worker.py``)
fit a tiny model with VRLAMB (gradient accumulation 2) and
``keras.callbacks.BackupAndRestore``. Worker 1 kills itself (``os._exit``) after the
5th batch: epoch 1, batch 1, while the last backup (end of epoch 0, 3 micro-steps)
holds a pending partial sum. Worker 0 is then stuck in a collective, as in a real
preemption, and the test kills it. Both are restarted with the same command line;
they must restore the backup (epoch 1, 3 micro-steps) and finish.

Reference: the same ``fit`` in this process under ``MirroredStrategy`` with two
replicas (``tf.data`` DATA sharding hands worker i the i-th half of each global
batch, as ``MirroredStrategy`` does replica i); this saves a third pair of worker
processes. VR's GSNR depends on how the batch is split, so a different split
would show. Every wait has a timeout; every process is killed in ``finally``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import multiworker_fault_worker as worker
from distribute_utils import free_ports

TIMEOUT_SECONDS = 240
VICTIM = 1
DIE_AFTER = worker.BATCHES_PER_EPOCH + 2


def start_workers(command, env, logs):
    return [
        subprocess.Popen(command(i), env=env, stdout=open(logs[i], "ab"), stderr=subprocess.STDOUT)
        for i in range(2)
    ]


def kill_all(processes):
    for p in processes:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def wait_for_exit(process, deadline):
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError("worker did not exit in time")
        time.sleep(0.2)
    return process.returncode


@pytest.mark.slow
@pytest.mark.multiworker
def test_killed_worker_and_restart_resume_to_the_uninterrupted_result(mirrored, tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    script = Path(worker.__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CONFIG", None)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]

    def command(i):
        return [sys.executable, str(script), ports, str(i), str(tmp_path), str(VICTIM), str(DIE_AFTER)]

    def log_text(i):
        return logs[i].read_text(errors="replace")

    processes = []
    try:
        # Run 1: the victim dies mid-epoch; the survivor hangs in a collective or fails.
        processes = start_workers(command, env, logs)
        deadline = time.monotonic() + TIMEOUT_SECONDS
        assert wait_for_exit(processes[VICTIM], deadline) == worker.KILLED_EXIT_CODE, log_text(VICTIM)[-3000:]
        kill_all(processes)
        assert (tmp_path / "killed").exists()
        for i in range(2):
            assert (tmp_path / f"backup{i}" / "latest.weights.h5").exists(), log_text(i)[-3000:]
            assert not (tmp_path / f"worker{i}.npz").exists()

        # Run 2: the same command on both workers.
        processes = start_workers(command, env, logs)
        deadline = time.monotonic() + TIMEOUT_SECONDS
        for i, p in enumerate(processes):
            assert wait_for_exit(p, deadline) == 0, log_text(i)[-3000:]
    finally:
        kill_all(processes)

    for i in range(2):
        starts = [line for line in log_text(i).splitlines() if line.startswith("START")]
        assert starts == ["START epoch=0 micro_steps=0", "START epoch=1 micro_steps=3"], starts
        # A finished fit removes its backup (BackupAndRestore(delete_checkpoint=True)).
        assert not (tmp_path / f"backup{i}").exists()

    weights, slots = worker.train(mirrored(2))
    expected = weights + slots
    for i in range(2):
        with np.load(tmp_path / f"worker{i}.npz") as got:
            assert len(got.files) == len(expected)
            for index, e in enumerate(expected):
                np.testing.assert_allclose(got[f"arr_{index}"], e, rtol=1e-5, atol=1e-6,
                                           err_msg=f"worker {i}, array {index}")
