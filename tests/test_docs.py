"""The README and docs/: the landing page's commands and example hold as written.

The README's Quick start test command is what ``.ci/run`` runs; its one example
runs as written in a fresh process on one device; no page or docstring cites a
file that is not in the repository, and every relative link resolves.
"""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _fenced_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_is_a_landing_page_of_at_most_300_lines():
    assert len(README.splitlines()) <= 300


def test_ci_runs_exactly_the_readme_test_command():
    commands = [line for block in _fenced_blocks(README, "bash") for line in block.splitlines()]
    test_command = [c for c in commands if "pytest" in c]
    assert len(test_command) == 1, commands
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command[0] in ci_lines


def test_quick_start_demo_command_installs_the_demo_extra():
    demo = [c for block in _fenced_blocks(README, "bash") for c in block.splitlines() if "tf-largebatch demo" in c]
    assert demo == ['python3 -m venv .venv && .venv/bin/pip install ".[demo]" && .venv/bin/tf-largebatch demo']


def test_readme_example_runs_as_written_on_one_device(tmp_path):
    (example,) = _fenced_blocks(README, "python")
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.keras").exists()
    final_accuracy = float(re.findall(r"accuracy: ([0-9.]+)", result.stdout)[-1])
    assert final_accuracy > 0.5, result.stdout   # the toy task is learned (chance is 0.1)


OUTSIDE_FILE = re.compile(r"shared/papers|DESIGN\.md|[a-z_]+_batch[a-z_]*\.txt|second_order_curvature_lr")


def test_no_page_module_config_or_test_cites_files_outside_the_repository():
    paths = [ROOT / "README.md", *PAGES, *(ROOT / "tf_largebatch").rglob("*.py"),
             *(ROOT / "tf_largebatch").rglob("*.yaml"), *(ROOT / "tests").glob("*.py"), *(ROOT / "examples").glob("*.py")]
    offenders = {}
    for path in paths:
        name = path.relative_to(ROOT).as_posix()
        if name == "tests/test_docs.py":
            continue
        found = OUTSIDE_FILE.findall(path.read_text(encoding="utf-8"))
        if found:
            offenders[name] = found
    assert offenders == {}


def test_relative_links_resolve():
    broken = []
    for path in [ROOT / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_test_a_page_cites_exists():
    # "tests/test_x.py::test_name"; "::test_other" is a test of the file named last.
    cited = re.compile(r"(tests/test_\w+\.py)(?:::(test_\w+))?|::(test_\w+)")
    missing = []
    for path in [ROOT / "README.md", *PAGES]:
        current = None
        for file, name, continued in cited.findall(path.read_text(encoding="utf-8")):
            current = file or current
            name = name or continued
            if not name or current is None:
                continue
            source = (ROOT / current).read_text(encoding="utf-8") if (ROOT / current).exists() else ""
            if not re.search(rf"^\s*def {name}\(", source, flags=re.M):
                missing.append(f"{path.relative_to(ROOT).as_posix()}: {current}::{name}")
    assert missing == []
