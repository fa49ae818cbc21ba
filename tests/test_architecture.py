"""The house rules of the code, checked on its source (docs/development.md, "The code, by layer").

Each rule reads the modules' syntax trees, so a test fails the moment a change breaks the rule,
naming the module and the line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "repair_ray"
MAX_LINES = 500


def modules(folder: Path = PACKAGE) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def dotted(path: Path) -> str:
    """``repair_ray/sweep/layout.py`` -> ``repair_ray.sweep.layout`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, names)`` of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = dotted(path) if path.name == "__init__.py" else dotted(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def test_no_module_is_over_500_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split these by concern (at most {MAX_LINES} lines a module): {long}"


def test_no_private_name_is_imported_from_another_module():
    crossings = [
        f"{p.relative_to(REPO)}:{line} imports {name} from {module}"
        for p in modules()
        for line, module, names in imports(p)
        if module.startswith("repair_ray") and module != dotted(p)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not crossings, f"make these public in the module that owns them: {crossings}"


RAY_INTERNALS = ("ray.experimental", "ray.autoscaler.v2", "ray.util.state")  # not underscored, not public either


def test_rays_private_apis_are_used_only_in_ray_private_where_each_has_a_fallback():
    """A private Ray name anywhere else would break on a Ray upgrade without the fallback and the
    once-said line of sweep/ray_private.py (docs/clusters.md, "Ray's private APIs")."""
    allowed = PACKAGE / "sweep" / "ray_private.py"
    offending = []
    for path in modules():
        if path == allowed:
            continue
        for line, module, names in imports(path):
            parts = module.split(".")
            if parts[0] == "ray" and (
                any(p.startswith("_") for p in parts)
                or any(n.startswith("_") for n in names)
                or module.startswith(RAY_INTERNALS)
            ):
                offending.append(f"{path.relative_to(REPO)}:{line} imports {module} {names}")
        for node in ast.walk(ast.parse(path.read_text())):  # ray._private.worker as an attribute
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id == "ray":
                    offending.append(f"{path.relative_to(REPO)}:{node.lineno} uses ray...{node.attr}")
    assert not offending, f"move these into repair_ray/sweep/ray_private.py, each with a fallback: {offending}"


def test_the_core_never_imports_ray_or_the_sweep():
    shell = (PACKAGE / "sweep", PACKAGE / "cli")
    offending = [
        f"{p.relative_to(REPO)}:{line} imports {module}"
        for p in modules()
        if not any(p.is_relative_to(folder) for folder in shell) and p.name != "__main__.py"
        for line, module, _ in imports(p)
        if module == "ray" or module.startswith(("ray.", "repair_ray.sweep", "repair_ray.cli"))
    ]
    assert not offending, offending


def test_the_train_and_pair_stages_import_the_layout_not_each_other():
    sweep = PACKAGE / "sweep"
    train = {"train_stage", "train_worker", "train_scheduler", "trials"}
    pair = {"pair_stage", "pair_worker"}
    crossings = []
    for side, other in ((train, pair), (pair, train)):
        for name in side:
            path = sweep / f"{name}.py"
            assert path.exists(), f"{path} moved: update this rule"
            crossings += [
                f"{name}:{line} imports {module}"
                for line, module, _ in imports(path)
                if module.rpartition(".")[2] in other and module.startswith("repair_ray.sweep")
            ]
    assert not crossings, crossings


def test_analysis_scripts_read_what_a_sweep_stored_without_ray(subprocesses):
    allowed = {"repair_ray.sweep.stored"}
    reaching = [
        f"{p.relative_to(REPO)}:{line} imports {module}"
        for p in modules(REPO / "analysis")
        for line, module, _ in imports(p)
        if module.startswith(("repair_ray.sweep", "repair_ray.cli")) and module not in allowed
    ]
    assert not reaching, reaching
    code = "import sys, repair_ray.sweep.stored\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "reading a stored sweep imported Ray"
