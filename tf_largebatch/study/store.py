"""The study's resumable result store: one JSON line per finished run.

``study.json`` holds the settings every stored run depends on (task, schedule
shape, evaluation spacing, seed); ``runs.jsonl`` gets one line per finished run, appended and
flushed to disk the moment the run ends, so an interrupted study (Ctrl-C, a
killed process) keeps everything it finished, and the same command resumes it.
A line cut short by a kill is ignored (that run is simply done again).
"""

import json
import math
import os
import pathlib

from tf_largebatch.atomic_files import write_text_atomically


class StoreMismatchError(ValueError):
    """The output directory holds a study made with other settings."""


def run_key(optimizer, batch_size, learning_rate, length, seed_offset):
    """What identifies a run: optimizer, batch size, learning rate (10 significant digits), schedule length, seed."""
    return (str(optimizer), int(batch_size), float(f"{learning_rate:.10g}"), int(length), int(seed_offset))


def key_of(run):
    return run_key(run["optimizer"], run["batch_size"], run["learning_rate"], run["length"], run["seed_offset"])


def finite_or_none(value):
    """JSON has no NaN or infinity: those become ``None`` (null)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RunStore:
    """Finished runs of one study directory.

    Args:
        directory: the study's output directory (created if missing).
        fingerprint: JSON-able dict of the settings runs depend on; a directory
            holding another fingerprint raises :class:`StoreMismatchError`.
    """

    def __init__(self, directory, fingerprint):
        self.directory = pathlib.Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_path = self.directory / "study.json"
        if settings_path.exists():
            stored = json.loads(settings_path.read_text())
            if stored.get("fingerprint") != self.fingerprint:
                changed = sorted(
                    key for key in set(stored.get("fingerprint", {})) | set(self.fingerprint)
                    if stored.get("fingerprint", {}).get(key) != self.fingerprint.get(key)
                )
                raise StoreMismatchError(
                    f"{self.directory} holds a study made with other settings (differing: {', '.join(changed)}); "
                    "use another --output-dir, or the same settings to resume it."
                )
            self.extras = stored.get("extras", {})
        else:
            self.extras = {}
            self._write_settings()
        self.runs_path = self.directory / "runs.jsonl"
        self._runs = {}
        if self.runs_path.exists():
            text = self.runs_path.read_text()
            if text and not text.endswith("\n"):
                with open(self.runs_path, "a") as stream:  # end a line cut short, so the next run starts clean
                    stream.write("\n")
            for line in text.splitlines():
                try:
                    run = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                self._runs[key_of(run)] = run

    def _write_settings(self):
        write_text_atomically(
            self.directory / "study.json",
            json.dumps({"fingerprint": self.fingerprint, "extras": self.extras}, indent=1),
        )

    @property
    def runs(self):
        """Every finished run, in the order they were first stored."""
        return list(self._runs.values())

    def get(self, key):
        return self._runs.get(key)

    def add(self, run):
        """Stores a finished run at once (appended, flushed and synced)."""
        key = key_of(run)
        with open(self.runs_path, "a") as stream:
            stream.write(json.dumps(run) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self._runs[key] = run

    def put_extra(self, name, value):
        """Stores a study-level result (e.g. the noise scale) next to the settings."""
        self.extras[name] = value
        self._write_settings()
