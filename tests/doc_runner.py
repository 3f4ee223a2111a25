"""Runs documentation blocks for ``tests/test_docs.py`` in one fresh process.

Usage: ``python tests/doc_runner.py JOBS.json RESULTS.json`` (the working directory
is a scratch directory). JOBS is a list of jobs, run in order:

- ``{"kind": "python", "id": ..., "page": ..., "code": ...}``: Python source. Jobs of
  the same page share one namespace, like the cells of a notebook; the page starts
  from a fresh namespace and a fresh Keras session. After a failure, the rest of
  that page's Python jobs are not run (they are reported as not run).
- ``{"kind": "command", "id": ..., "argv": [...]}``: a ``tf-largebatch`` command
  line or a ``python`` script / ``-m`` module, run in this process with its own
  ``sys.argv``; its exit status and its output (stdout and stderr, captured at the
  Python level) are recorded.

RESULTS maps each job id to ``{"ok": bool, "exit": int | None, "output": str,
"error": str}``.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run_python(job, namespaces):
    namespace = namespaces.setdefault(job["page"], {"__name__": "__main__"})
    if len(namespace) == 1:  # a new page: a fresh Keras session
        import keras

        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(job["code"], job["id"], "exec"), namespace)
    return 0, out.getvalue()


def _run_command(job):
    argv = job["argv"]
    out = io.StringIO()
    code = 0
    saved_argv = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0] == "tf-largebatch":
                import tf_largebatch_cli

                code = tf_largebatch_cli.main(argv[1:])
            elif argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
    return code or 0, out.getvalue()


def main(jobs_path, results_path):
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    results, namespaces, failed_pages = {}, {}, set()
    for job in jobs:
        if job["kind"] == "python" and job["page"] in failed_pages:
            results[job["id"]] = {"ok": False, "exit": None, "output": "",
                                  "error": "not run: an earlier block of the page failed"}
            continue
        try:
            if job["kind"] == "python":
                code, output = _run_python(job, namespaces)
            else:
                code, output = _run_command(job)
            results[job["id"]] = {"ok": True, "exit": code, "output": output, "error": ""}
        except BaseException:  # noqa: BLE001 - every failure is reported, the next job still runs
            if job["kind"] == "python":
                failed_pages.add(job["page"])
            results[job["id"]] = {"ok": False, "exit": None, "output": "", "error": traceback.format_exc()}
        sys.stdout.flush()
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main(sys.argv[1], sys.argv[2])
