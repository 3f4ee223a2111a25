"""docs/design.md's map of the optimizers names modules that exist, and every one of them."""

import pathlib
import re

import tf_largebatch

PACKAGE_DIR = pathlib.Path(tf_largebatch.__file__).parent
DESIGN = PACKAGE_DIR.parent / "docs" / "design.md"


def _map_section():
    text = DESIGN.read_text()
    start = text.index("## The module map")
    end = text.index("## The skipped-update rule")
    return text[start:end]


def _named_modules(text):
    """``optimizers/x.py`` paths in backticks; bare ``x.py`` in the optimizers' rows count as ``optimizers/x.py``."""
    named = set(re.findall(r"`(optimizers/\w+\.py)`", text))
    for row in re.findall(r"^\|.*$", text, flags=re.MULTILINE):
        if "optimizers/" in row:
            named |= {f"optimizers/{name}" for name in re.findall(r"`(\w+\.py)`", row)}
    return named


def test_every_module_the_map_names_exists():
    named = _named_modules(_map_section())
    assert named, "the map names no module"
    missing = sorted(path for path in named if not (PACKAGE_DIR / path).is_file())
    assert missing == [], f"docs/design.md names modules that do not exist: {missing}"


def test_the_map_names_every_optimizer_module():
    named = _named_modules(_map_section())
    modules = {f"optimizers/{p.name}" for p in (PACKAGE_DIR / "optimizers").glob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules missing from docs/design.md's map"


def test_the_map_names_the_components_classes():
    section = _map_section()
    for name in ("ReplicaReducer", "MomentsRecorder", "sample_moments", "noise_estimates"):
        assert name in section
