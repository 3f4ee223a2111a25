"""The package reads as a one-way flow: seam <- math <- optimizer core <- optimizers <- recipe <- pipelines <- CLI.

The seam (``optimizers/keras_seam.py``, the one module that touches Keras's and
TensorFlow's private API) imports nothing of the package, so it sits beneath the
math, which may ask it how the current trace is compiled.

Every module of ``tf_largebatch`` has a layer below; a module may import modules
of its own layer or lower ones, never a higher one (imports inside functions
count too). A module of ``config/``, ``pipelines/`` or ``layers/`` takes its
sub-package's layer; any other new module (``optimizers/`` in particular, where core
and optimizers sit side by side) must be given a layer here, so the map stays complete.
"""

import ast
import pathlib

import tf_largebatch

PACKAGE_DIR = pathlib.Path(tf_largebatch.__file__).parent

SEAM, MATH, CORE, OPTIMIZERS, RECIPE, PIPELINES, CLI = range(7)
LAYER_NAMES = ["seam", "math", "optimizer core", "optimizers", "recipe/callbacks", "pipelines/study", "cli"]

LAYERS = {
    # The one seam to private Keras/TensorFlow API: imports nothing of the package.
    "tf_largebatch.optimizers.keras_seam": SEAM,
    # Pure math and argument checks: no Keras optimizer in sight.
    "tf_largebatch._version": MATH,
    "tf_largebatch.validation": MATH,
    "tf_largebatch.atomic_files": MATH,
    "tf_largebatch.optimizers.rules": MATH,
    "tf_largebatch.optimizers.gsnr": MATH,
    "tf_largebatch.optimizers.gain": MATH,
    "tf_largebatch.goodput": MATH,
    # The optimizer core: the base class, split by job.
    "tf_largebatch.optimizers.docstrings": CORE,
    "tf_largebatch.optimizers.selection": CORE,
    "tf_largebatch.optimizers.slots": CORE,
    "tf_largebatch.optimizers.replicas": CORE,
    # The chassis's components, each owning its state, and the chassis.
    "tf_largebatch.optimizers.reducer": CORE,
    "tf_largebatch.optimizers.moments": CORE,
    "tf_largebatch.optimizers.base": CORE,
    "tf_largebatch.optimizers.loss_scale": CORE,
    # The optimizers.
    "tf_largebatch.optimizers": OPTIMIZERS,
    "tf_largebatch.optimizers.sngm": OPTIMIZERS,
    "tf_largebatch.optimizers.layerwise": OPTIMIZERS,
    "tf_largebatch.optimizers.lars": OPTIMIZERS,
    "tf_largebatch.optimizers.lamb": OPTIMIZERS,
    "tf_largebatch.optimizers.curvature": OPTIMIZERS,
    "tf_largebatch.optimizers.vr": OPTIMIZERS,
    "tf_largebatch.optimizers.adascale": OPTIMIZERS,
    "tf_largebatch.optimizers.registry": OPTIMIZERS,
    "tf_largebatch.optimizers.lookup": OPTIMIZERS,
    # The recipe around them, and monitoring.
    "tf_largebatch.schedules": RECIPE,
    "tf_largebatch.scaling": RECIPE,
    "tf_largebatch.losses": RECIPE,
    "tf_largebatch.layers": RECIPE,
    "tf_largebatch.layers.ghost_batch_norm": RECIPE,
    "tf_largebatch.callbacks": RECIPE,
    "tf_largebatch.batch_size_schedule": RECIPE,
    "tf_largebatch.strategy": RECIPE,
    # Pipelines, configs and the study.
    "tf_largebatch.config": PIPELINES,
    "tf_largebatch.pipelines": PIPELINES,
    "tf_largebatch.pipelines.bert": PIPELINES,
    "tf_largebatch.pipelines.cifar": PIPELINES,
    "tf_largebatch.pipelines.datasets": PIPELINES,
    "tf_largebatch.pipelines.imagenet": PIPELINES,
    "tf_largebatch.pipelines.models": PIPELINES,
    "tf_largebatch.pipelines.train": PIPELINES,
    "tf_largebatch.pipelines.backup": PIPELINES,
    "tf_largebatch.pipelines.schedule_in_updates": PIPELINES,
    "tf_largebatch.pipelines.synthetic": PIPELINES,
    "tf_largebatch.pipelines.throughput": PIPELINES,
    "tf_largebatch.study": PIPELINES,
    "tf_largebatch.study.__main__": CLI,
    "tf_largebatch.study.analysis": PIPELINES,
    "tf_largebatch.study.api": PIPELINES,
    "tf_largebatch.study.engine": PIPELINES,
    "tf_largebatch.study.grid": PIPELINES,
    "tf_largebatch.study.plots": PIPELINES,
    "tf_largebatch.study.recipes": PIPELINES,
    "tf_largebatch.study.report": PIPELINES,
    "tf_largebatch.study.scaling_fit": PIPELINES,
    "tf_largebatch.study.statistics": PIPELINES,
    "tf_largebatch.study.store": PIPELINES,
    "tf_largebatch.study.tasks": PIPELINES,
    "tf_largebatch.study.cli": CLI,
    # The command line and the package's front door.
    "tf_largebatch.cli": CLI,
    "tf_largebatch.startup": CLI,
    "tf_largebatch": CLI,
    "tf_largebatch_cli": CLI,
}

#: Sub-packages whose modules all share one layer.
PACKAGE_LAYERS = {
    "tf_largebatch.layers": RECIPE,
    "tf_largebatch.config": PIPELINES,
    "tf_largebatch.pipelines": PIPELINES,
}


def layer_of(module):
    """The layer of a module of the package, or ``None`` if it has none."""
    if module in LAYERS:
        return LAYERS[module]
    for package, layer in PACKAGE_LAYERS.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def _module_name(path):
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    modules = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    entry_point = PACKAGE_DIR.parent / "tf_largebatch_cli.py"
    if entry_point.exists():
        modules["tf_largebatch_cli"] = entry_point
    return modules


def _imported_modules(path, known):
    """Package modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield node.lineno, candidate if candidate in known else node.module


def test_every_module_has_a_layer():
    unassigned = sorted(name for name in _modules() if layer_of(name) is None)
    assert unassigned == [], f"give these modules a layer in tests/test_layering.py: {unassigned}"


def test_no_module_imports_a_higher_layer():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        own = layer_of(name)
        if own is None:
            continue
        for line, imported in _imported_modules(path, modules):
            target = layer_of(imported) if imported.startswith("tf_largebatch") else None
            if target is not None and target > own:
                upward.append(f"{name} ({LAYER_NAMES[own]}) line {line} imports {imported} "
                              f"({LAYER_NAMES[target]})")
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: a core module importing an optimizer is reported."""
    fake = tmp_path / "base.py"
    fake.write_text("def f():\n    from tf_largebatch.optimizers import lamb\n")
    found = list(_imported_modules(fake, _modules()))
    assert found == [(2, "tf_largebatch.optimizers.lamb")]
    assert layer_of("tf_largebatch.optimizers.lamb") > layer_of("tf_largebatch.optimizers.base")
    assert layer_of("tf_largebatch.config.loading") == PIPELINES
    assert layer_of("tf_largebatch.optimizers.new_module") is None
