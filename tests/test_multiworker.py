"""VR under MultiWorkerMirroredStrategy: two worker processes on localhost.

The two workers (one CPU replica each) must end with the same weights as one
process with a MirroredStrategy of two replicas running the same loop on the
same per-replica shards.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import multiworker_vr_worker as worker
from distribute_utils import free_ports

TIMEOUT_SECONDS = 240


@pytest.mark.slow
@pytest.mark.multiworker
def test_two_workers_equal_one_process_with_two_replicas(mirrored, tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    script = Path(worker.__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CONFIG", None)
    outputs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    processes = [
        subprocess.Popen([sys.executable, str(script), ports, str(i), str(outputs[i])], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT_SECONDS)[0].decode(errors="replace") for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-3000:]

    expected = worker.train(mirrored(2))
    for out in outputs:
        with np.load(out) as got:
            for i, e in enumerate(expected):
                np.testing.assert_allclose(got[f"arr_{i}"], e, rtol=1e-5, atol=1e-6)
