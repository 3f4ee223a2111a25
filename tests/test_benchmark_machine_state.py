"""The benchmarks' machine-state helper: the ``--malloc`` setting and the CPU-time split."""

import argparse
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

_PROBE = """
import argparse, ctypes, ctypes.util, sys
sys.path.insert(0, {benchmarks!r})
import machine_state
parser = argparse.ArgumentParser()
machine_state.add_malloc_argument(parser)
args = parser.parse_args([{choice!r}])
print(machine_state.configure_malloc(args.malloc))
"""


def _setting(choice):
    code = _PROBE.format(benchmarks=BENCHMARKS, choice=f"--malloc={choice}")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_pooled_malloc_is_applied_and_named():
    assert _setting("pooled").startswith("pooled (glibc mmap threshold 1 GiB")
    assert _setting("default") == "default"


def test_an_unknown_malloc_choice_is_refused_by_the_parser():
    sys.path.insert(0, BENCHMARKS)
    try:
        import machine_state
    finally:
        sys.path.remove(BENCHMARKS)
    parser = argparse.ArgumentParser()
    machine_state.add_malloc_argument(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--malloc", "jemalloc"])
