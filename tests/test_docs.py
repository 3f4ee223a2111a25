"""The README and docs/ cannot rot: every command and every Python block is tested.

How a page's code is tested
===========================

Every fenced block of README.md and docs/*.md is found and handled by its language:

- ``python`` blocks run. The blocks of one page run in order in one namespace (like
  notebook cells), so a later block may use an earlier block's names.
- ``bash`` / ``sh`` / ``shell`` / ``console`` blocks, and bare fences whose first line
  is a command (``tf-largebatch ...``, ``python ...``, ``pytest ...``, ``pip ...``,
  ``$ ...``), are shell. Each command line (``\\`` continues a line, ``&&`` chains
  commands, ``# ...`` is a comment; in a block with ``$ `` prompts only the prompted
  lines are commands, the rest is their shown output) is handled by its program:

  * ``pip install ...`` / ``python -m venv``: not run; every extra it names
    (``".[demo]"``) must exist in pyproject.toml;
  * ``pytest ...`` / ``python -m pytest ...``: not run (the suite runs those tests);
    every file and ``::test`` it names must exist and a ``-k`` expression must select
    at least one test;
  * ``.ci/run``, ``tensorboard ...``: not run; the script must exist;
  * ``tf-largebatch ...``, ``python -m tf_largebatch...``, ``python examples/x.py``,
    ``python benchmarks/x.py``: run. A command with ``--dry-run``, ``--help`` or
    ``--version`` runs in one shared process with the Python blocks; any other command
    runs in its own process and must be marked (below) to say how it is kept small.
- ``text``, ``yaml``, ``json`` and bare fences that do not start with a command are
  shown output or data and are not run.

A block says how the test runs it with an HTML comment on the line(s) right above its
fence (invisible on the rendered page)::

    <!-- doctest: append: --dry-run -->

or, for several directives, one per line::

    <!-- doctest
    replace: epochs=99 -> epochs=1
    setup: train_examples = tf.data.Dataset.from_tensor_slices((x, y))
    -->

Directives (``replace``, ``setup`` and ``check`` may repeat):

- ``skip: REASON``: not run, not checked (e.g. it needs a TPU pod). The reason is required.
- ``static: REASON``: not run; the program must exist and every ``--flag`` of the command
  must be defined by its argument parser (Python blocks: compiled only).
- ``append: ARGS``: appended to every runnable command of the block (``--dry-run``,
  ``--smoke``, tiny sizes).
- ``replace: OLD -> NEW``: text replaced in the block before it runs; ``{tmp}`` in NEW is
  the test's scratch directory.
- ``setup: PYTHON`` / ``check: PYTHON``: a line run before / after the block, in the page's
  namespace (small data for names the block uses; an assertion on its result).
- ``exit: N``: the expected exit status of the block's commands (default 0).
- ``output: checked``: in a ``$ `` block, every shown output line (but ``...``) must be
  a line of the command's real output.
- ``slow: REASON``: the block (for Python, its whole page) runs in its own process, in a
  test marked ``slow``.

``PENDING_MARKS`` below holds directives for blocks of pages that have no comment yet;
a comment on the page wins, and an entry that matches no block fails the test.

Every figure a page calls "measured" must carry the command that measured it (an inline
command, a fenced block next to it, or a link to the page that has it) and, for a time,
the machine's load: ``test_every_measured_figure_carries_its_command_and_load``.
"""

import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOC_FILES = [ROOT / "README.md", *PAGES]
RUNNER = ROOT / "tests" / "doc_runner.py"

PYTHON_LANGUAGES = {"python", "py", "python3"}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = ("tf-largebatch", "python", "python3", "pytest", "pip", "$ ", ".ci/run", "/usr/bin/time")
FAST_FLAGS = {"--dry-run", "--help", "--version"}
DIRECTIVE_KEYS = {"skip", "static", "append", "replace", "setup", "check", "exit", "output", "slow"}
REPEATABLE = {"replace", "setup", "check"}

# Directives for blocks of pages without a doctest comment yet, keyed by (page, first line
# of the block). Move them into the pages (as <!-- doctest ... --> comments) when editing those.
PENDING_MARKS = {}


# --------------------------------------------------------------------------- extraction


@dataclasses.dataclass
class Block:
    page: str          # "README.md", "docs/x.md"
    line: int          # 1-based line of the opening fence
    language: str      # "python", "shell" or "output"
    text: str
    directives: dict

    @property
    def id(self):
        return f"{self.page}:{self.line}"

    @property
    def first_line(self):
        return next((line for line in self.text.splitlines() if line.strip()), "")


def _parse_directives(comment, where):
    """``{"key": value or [values]}`` from the body of a ``<!-- doctest ... -->`` comment."""
    directives = {}
    for raw in comment.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in DIRECTIVE_KEYS:
            raise ValueError(f"{where}: unknown doctest directive {line!r}; known: {sorted(DIRECTIVE_KEYS)}")
        if key in ("skip", "static", "slow") and not value:
            raise ValueError(f"{where}: '{key}:' needs a reason")
        if key == "replace" and " -> " not in value:
            raise ValueError(f"{where}: 'replace: OLD -> NEW', got {value!r}")
        if key in REPEATABLE:
            directives.setdefault(key, []).append(value)
        elif key in directives:
            raise ValueError(f"{where}: directive {key!r} given twice")
        else:
            directives[key] = value
    return directives


def _is_command_line(line):
    return line.lstrip().startswith(COMMAND_WORDS) or line.startswith(".venv/")


def _blocks_of(path):
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        text = "\n".join(lines[i + 1:end]) + "\n"
        language = opening.group(1).lower()
        if language in PYTHON_LANGUAGES:
            kind = "python"
        elif language in SHELL_LANGUAGES or (not language and _is_command_line(text.lstrip())):
            kind = "shell"
        else:
            kind = "output"
        comment = _comment_above(lines, i)
        directives = _parse_directives(comment, f"{page}:{i + 1}") if comment is not None else None
        blocks.append(Block(page, i + 1, kind, text, directives))
        i = end + 1
    return blocks


def _comment_above(lines, fence):
    """The body of a ``<!-- doctest ... -->`` comment ending right above line ``fence``."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].rstrip().endswith("-->"):
        return None
    start = j
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    body = "\n".join(lines[start:j + 1]).strip()
    match = re.fullmatch(r"<!--\s*doctest\s*:?(.*?)-->", body, flags=re.S)
    return None if match is None else match.group(1)


def all_blocks():
    blocks = [block for path in DOC_FILES for block in _blocks_of(path)]
    for block in blocks:
        if block.directives is None:
            pending = PENDING_MARKS.get((block.page, block.first_line))
            block.directives = _parse_directives(pending, block.id) if pending else {}
    return blocks


BLOCKS = all_blocks()


# --------------------------------------------------------------------------- shell commands


@dataclasses.dataclass
class Command:
    block: Block
    argv: list
    output: list      # shown output lines of a "$ " command


def _commands_of(block):
    """The block's commands, after its ``replace`` directives, ``&&`` split."""
    text = block.text
    for rule in block.directives.get("replace", []):
        old, new = rule.split(" -> ", 1)
        assert old in text, f"{block.id}: 'replace: {rule}' matches nothing in the block"
        text = text.replace(old, new)
    joined, continuing = [], False
    for line in text.splitlines():
        if continuing:
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
        continuing = joined[-1].endswith("\\")
    prompted = any(line.startswith("$ ") for line in joined)
    commands = []
    for line in joined:
        if prompted and not line.startswith("$ "):
            if commands and line.strip() and line.strip() != "...":
                commands[-1].output.append(line.strip())
            continue
        line = line[2:] if line.startswith("$ ") else line
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        chain = [[]]
        for token in tokens:
            if token == "&&":
                chain.append([])
            else:
                chain[-1].append(token)
        commands.extend(Command(block, argv, []) for argv in chain if argv)
    return commands


def _program(argv):
    """``argv`` without launchers (``.venv/bin/``, ``time``) and with ``python`` as ``python``."""
    argv = list(argv)
    while argv and argv[0] in ("/usr/bin/time", "time"):
        argv = argv[1:]
    argv[0] = argv[0].removeprefix(".venv/bin/")
    if argv[0] in ("python3", sys.executable):
        argv[0] = "python"
    return argv


def _kind(argv):
    """How a command is tested: 'venv', 'pip', 'pytest', 'script', 'run' or 'unknown'."""
    if argv[:3] == ["python", "-m", "venv"]:
        return "venv"
    if argv[0] == "pip" or argv[:3] == ["python", "-m", "pip"]:
        return "pip"
    if argv[0] == "pytest" or argv[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if argv[0] in (".ci/run", "tensorboard"):
        return "script"
    if argv[0] == "tf-largebatch":
        return "run"
    if argv[0] == "python" and len(argv) > 1 and (argv[1] == "-m" or argv[1].endswith(".py")):
        return "run"
    return "unknown"


def _runnable_argv(command):
    """The argv the runner executes: ``tf-largebatch ...``, ``-m module ...`` or ``script.py ...``."""
    argv = _program(command.argv)
    argv = argv if argv[0] == "tf-largebatch" else argv[1:]
    if argv[:2] == ["-m", "tf_largebatch_cli"]:
        argv = ["tf-largebatch", *argv[2:]]
    return argv + shlex.split(command.block.directives.get("append", ""))


def _is_fast(argv, directives=None):
    """A validating run (``--dry-run``, ...) or one expected to fail (``exit: N``) is quick."""
    return bool(FAST_FLAGS & set(argv)) or int((directives or {}).get("exit", 0)) != 0


COMMANDS = [c for b in BLOCKS if b.language == "shell" and "skip" not in b.directives for c in _commands_of(b)]
RUN_COMMANDS = [c for c in COMMANDS if _kind(_program(c.argv)) == "run" and "static" not in c.block.directives]
FAST_COMMANDS = [c for c in RUN_COMMANDS if _is_fast(_runnable_argv(c), c.block.directives)]
OWN_PROCESS_COMMANDS = [c for c in RUN_COMMANDS if not _is_fast(_runnable_argv(c), c.block.directives)]


def _python_pages():
    pages = {}
    for block in BLOCKS:
        if block.language == "python" and not {"skip", "static"} & set(block.directives):
            pages.setdefault(block.page, []).append(block)
    return pages


PYTHON_PAGES = _python_pages()
SLOW_PYTHON_PAGES = sorted(p for p, bs in PYTHON_PAGES.items() if any("slow" in b.directives for b in bs))
FAST_PYTHON_PAGES = sorted(p for p in PYTHON_PAGES if p not in SLOW_PYTHON_PAGES)


# --------------------------------------------------------------------------- running


def _python_jobs(page, tmp):
    jobs = []
    for block in PYTHON_PAGES[page]:
        code = block.text
        for rule in block.directives.get("replace", []):
            old, new = rule.split(" -> ", 1)
            assert old in code, f"{block.id}: 'replace: {rule}' matches nothing in the block"
            code = code.replace(old, new.replace("{tmp}", str(tmp)))
        code = "\n".join([*block.directives.get("setup", []), code, *block.directives.get("check", [])])
        jobs.append({"kind": "python", "id": block.id, "page": page, "code": code})
    return jobs


def _command_job(command, index, tmp):
    argv = [a.replace("{tmp}", str(tmp)) for a in _runnable_argv(command)]
    return {"kind": "command", "id": f"{command.block.id}#{index}", "argv": argv}


def _run_jobs(jobs, tmp):
    """Runs ``jobs`` in one fresh process in ``tmp``, which sees the repository's folders."""
    tmp.mkdir(parents=True, exist_ok=True)
    for folder in ("tpu_configs", "examples", "benchmarks", "tests", ".ci"):  # commands say "tpu_configs/x.yaml"
        if not (tmp / folder).exists():
            (tmp / folder).symlink_to(ROOT / folder)
    (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(RUNNER), "jobs.json", "results.json"], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and (tmp / "results.json").exists(), result.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text(encoding="utf-8"))


def _command_failures(commands, results):
    failures = []
    for index, command in commands:
        job_id = f"{command.block.id}#{index}"
        outcome = results[job_id]
        expected = int(command.block.directives.get("exit", 0))
        if not outcome["ok"]:
            failures.append(f"{job_id} {command.argv}: raised\n{outcome['error'][-2000:]}")
        elif outcome["exit"] != expected:
            failures.append(f"{job_id} {command.argv}: exit {outcome['exit']}, expected {expected}\n"
                            f"{outcome['output'][-2000:]}")
        elif command.block.directives.get("output") == "checked":
            produced = {line.strip() for line in outcome["output"].splitlines()}
            missing = [line for line in command.output if line not in produced]
            if missing:
                failures.append(f"{job_id}: shown output not produced: {missing}\n{outcome['output'][-2000:]}")
    return failures


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory):
    """One process runs the Python blocks of every fast page and every ``--dry-run`` command."""
    tmp = tmp_path_factory.mktemp("docs")
    jobs = [job for page in FAST_PYTHON_PAGES for job in _python_jobs(page, tmp)]
    jobs += [_command_job(c, i, tmp) for i, c in enumerate(COMMANDS) if c in FAST_COMMANDS]
    return _run_jobs(jobs, tmp)


@pytest.mark.parametrize("page", FAST_PYTHON_PAGES)
def test_python_blocks_run(page, fast_results):
    failures = [f"{job['id']}:\n{fast_results[job['id']]['error'][-3000:]}"
                for job in _python_jobs(page, "") if not fast_results[job["id"]]["ok"]]
    assert failures == []


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PYTHON_PAGES)
def test_slow_python_blocks_run(page, tmp_path):
    # Marked slow in the page: "slow: REASON" on one of its blocks.
    results = _run_jobs(_python_jobs(page, tmp_path), tmp_path)
    failures = [f"{job_id}:\n{r['error'][-3000:]}" for job_id, r in results.items() if not r["ok"]]
    assert failures == []


def test_dry_run_commands_run(fast_results):
    indexed = [(i, c) for i, c in enumerate(COMMANDS) if c in FAST_COMMANDS]
    assert _command_failures(indexed, fast_results) == []


def _own_process_params():
    params = []
    for index, command in enumerate(COMMANDS):
        if command in OWN_PROCESS_COMMANDS:
            marks = [pytest.mark.slow] if "slow" in command.block.directives else []
            params.append(pytest.param(index, id=f"{command.block.id}#{index}", marks=marks))
    return params


@pytest.mark.parametrize("index", _own_process_params())
def test_commands_that_train_run_in_their_own_process(index, tmp_path):
    command = COMMANDS[index]
    results = _run_jobs([_command_job(command, index, tmp_path)], tmp_path)
    assert _command_failures([(index, command)], results) == []


# --------------------------------------------------------------------------- static checks


def test_every_block_says_how_it_is_tested():
    problems = []
    for command in COMMANDS:
        argv, directives = _program(command.argv), command.block.directives
        kind = _kind(argv)
        if kind == "unknown":
            problems.append(f"{command.block.id}: {command.argv[0]!r} is no program this test knows; "
                            "mark the block 'skip: REASON' or 'static: REASON'")
        elif (kind == "run" and "static" not in directives and not _is_fast(_runnable_argv(command), directives)
              and not {"append", "replace", "slow"} & set(directives)):
            problems.append(f"{command.block.id}: {' '.join(command.argv)!r} would run in full; mark the block "
                            "(append: --dry-run, --smoke or tiny sizes; slow: REASON; static: REASON)")
    used = {(b.page, b.first_line) for b in BLOCKS}
    problems += [f"PENDING_MARKS entry matches no block: {key}" for key in PENDING_MARKS if key not in used]
    assert problems == []


def _extras():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def test_pip_commands_name_existing_extras():
    extras, wrong = _extras(), []
    for command in COMMANDS:
        if _kind(_program(command.argv)) == "pip":
            for arg in command.argv:
                match = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
                wrong += [f"{command.block.id}: {e}" for e in (match.group(1).split(",") if match else []) if e not in extras]
    assert wrong == []


def _test_names(path):
    return re.findall(r"^\s*def (test_\w+)\(", path.read_text(encoding="utf-8"), flags=re.M)


def _k_selects(expression, names):
    from _pytest.mark.expression import Expression  # pytest's own -k parser

    compiled = Expression.compile(expression)
    return [n for n in names if compiled.evaluate(lambda word, n=n, **_: word.lower() in n.lower())]


def test_pytest_commands_select_existing_tests():
    wrong = []
    for command in COMMANDS:
        argv = _program(command.argv)
        if _kind(argv) != "pytest":
            continue
        paths = [a for a in argv if a.startswith("tests/")]
        names = []
        for target in paths:
            file, _, test = target.partition("::")
            if not (ROOT / file).exists():
                wrong.append(f"{command.block.id}: {file} does not exist")
                continue
            found = _test_names(ROOT / file)
            if test and test not in found:
                wrong.append(f"{command.block.id}: {target} does not exist")
            names += [f"{pathlib.Path(file).stem}::{n}" for n in found]
        if "-k" in argv and paths and not _k_selects(argv[argv.index("-k") + 1], names):
            wrong.append(f"{command.block.id}: -k {argv[argv.index('-k') + 1]!r} selects no test of {paths}")
    assert wrong == []


def _parser_sources(argv):
    """The source files whose argument parsers define the flags of a runnable command."""
    if argv[0] == "tf-largebatch":
        return [ROOT / "tf_largebatch" / "cli.py", *(ROOT / "tf_largebatch" / "study").glob("cli*.py")]
    script = argv[2] if argv[1] == "-m" else argv[1]
    if argv[1] == "-m":
        script = script.replace(".", "/")
        candidates = [ROOT / f"{script}.py", ROOT / script / "__main__.py", ROOT / script / "cli.py"]
        return [p for p in candidates if p.exists()]
    return [ROOT / script] if (ROOT / script).exists() else []


def test_static_commands_name_existing_programs_and_flags():
    wrong = []
    for command in COMMANDS:
        argv = _program(command.argv)
        kind = _kind(argv)
        if kind == "script" and argv[0] == ".ci/run" and not (ROOT / ".ci" / "run").exists():
            wrong.append(f"{command.block.id}: .ci/run does not exist")
        if kind != "run":
            continue
        sources = _parser_sources(argv)
        if not sources:
            wrong.append(f"{command.block.id}: no such program {' '.join(argv[:3])}")
            continue
        text = "".join(p.read_text(encoding="utf-8") for p in sources)
        wrong += [f"{command.block.id}: {flag} is not a flag of {argv[0]} {argv[1]}"
                  for flag in (a.split("=")[0] for a in argv if a.startswith("--"))
                  if f'"{flag}"' not in text]
    assert wrong == []


def test_static_python_blocks_compile():
    for block in BLOCKS:
        if block.language == "python" and "static" in block.directives:
            compile(block.text, block.id, "exec")


# --------------------------------------------------------------------------- measured figures

MEASURED = re.compile(r"(?<!not )(?<!not been )\bmeasured\b", re.I)
INLINE_COMMAND = re.compile(r"`(?:python3? |pytest |tf-largebatch |\.ci/run|/usr/bin/time |time |tests/|benchmarks/|examples/)")
PAGE_LINK = re.compile(r"\]\((?:docs/)?[\w./-]+\.md(?:#[^)]*)?\)")
TIME_FIGURE = re.compile(r"\d\s*(?:ms|s|min|h|seconds|minutes|hours)\b|\bwall\b|CPU time")
MACHINE_LOAD = re.compile(r"\bload\b|\bquiet\b|\bidle\b|\bbusy\b", re.I)

# Paragraphs of pages outside this test's own edits that do not yet carry their command or
# load, as (page, a phrase of the paragraph). Fix the paragraph, then delete its entry:
# an entry that matches no offending paragraph fails the test.
KNOWN_UNSOURCED = set()


def _paragraphs(path):
    """``(first line, text, fenced-block line numbers)`` of each paragraph outside fences."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    in_fence, paragraphs, current = False, [], []
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or line.startswith("```") or not line.strip() or line.startswith("#"):
            if current:
                paragraphs.append(current)
            current = []
            continue
        current.append((i, line))
    if current:
        paragraphs.append(current)
    return [(p[0][0], "\n".join(line for _, line in p), p[-1][0], fences) for p in paragraphs]


def _unsourced(path):
    offending = []
    for start, text, end, fences in _paragraphs(path):
        if not (MEASURED.search(text) and re.search(r"\d", text)):
            continue
        near_block = any(end < f <= end + 12 or start - 3 <= f < start for f in fences)
        has_command = bool(INLINE_COMMAND.search(text) or PAGE_LINK.search(text) or near_block)
        needs_load = bool(TIME_FIGURE.search(text)) and not PAGE_LINK.search(text)
        if not has_command or (needs_load and not MACHINE_LOAD.search(text)):
            offending.append((start + 1, text))
    return offending


def test_every_measured_figure_carries_its_command_and_load():
    offending, known_hit = [], set()
    for path in DOC_FILES:
        page = path.relative_to(ROOT).as_posix()
        for line, text in _unsourced(path):
            known = {k for k in KNOWN_UNSOURCED if k[0] == page and k[1] in text}
            known_hit |= known
            if not known:
                offending.append(f"{page}:{line}: {text[:200]}")
    assert offending == [], "a 'measured' figure without its command (or, for a time, the machine load)"
    assert KNOWN_UNSOURCED - known_hit == set(), "fixed: delete these KNOWN_UNSOURCED entries"


# --------------------------------------------------------------------------- the landing page


def test_readme_is_a_landing_page_of_at_most_300_lines():
    assert len(README.splitlines()) <= 300


def test_readme_quick_start_has_exactly_the_two_commands():
    commands = [b.text.strip() for b in BLOCKS if b.page == "README.md" and b.language == "shell"]
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install ".[demo]" && .venv/bin/tf-largebatch demo',
        'python3 -m venv .venv && .venv/bin/pip install ".[test]" && .venv/bin/python -m pytest -q -n 2 --dist worksteal',
    ]


def test_ci_runs_exactly_the_readme_test_command():
    test_command = [c for c in README.splitlines() if "pytest" in c and c.startswith("python3 -m venv")]
    assert len(test_command) == 1
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command[0] in ci_lines


# --------------------------------------------------------------------------- references

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
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_test_a_page_cites_exists():
    # "tests/test_x.py::test_name"; "::test_other" is a test of the file named last.
    cited = re.compile(r"(tests/test_\w+\.py)(?:::(test_\w+))?|::(test_\w+)")
    missing = []
    for path in DOC_FILES:
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


# --------------------------------------------------------------------------- user voice

VOICE = {
    "an issue number": re.compile(r"(?<![\w&])#\d+\b"),
    "an internal role": re.compile(r"\bthe lead\b|\bhelpers?\b|\bsession\b", re.I),
    "the first person": re.compile(r"\bI\b(?! ?/ ?O)|\bI'(?:m|ve|d)\b|\bmy own\b|\b[Ww]e\b|\b[Oo]urs?\b"),
}
USER_PAGES = ["README.md", "docs/index.md", "docs/keras.md", "docs/guarantees.md", "docs/recipe.md",
              "docs/monitoring.md"]


@pytest.mark.parametrize("page", USER_PAGES)
def test_user_pages_speak_to_users(page):
    # Outside fenced blocks: no issue numbers, internal roles or first person.
    text = re.sub(r"```.*?```", "", (ROOT / page).read_text(encoding="utf-8"), flags=re.S)
    found = [f"{what}: {m.group(0)!r} in ...{text[max(0, m.start() - 40):m.end() + 40]!r}"
             for what, pattern in VOICE.items() for m in pattern.finditer(text)]
    assert found == []
