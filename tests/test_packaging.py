"""What the package imports is what it declares."""

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "sbi_alfi"
# Imported by the benchmark only, and installed by `make benchmark-install`
# without its stale dependencies, so that no extra can declare it.
BENCHMARK_ONLY = {"sbibm"}
# The extras a user opts into: their modules are imported only where used.
USER_EXTRAS = {"arviz", "dask", "ray"}


def imported_modules(skip: Path | None = None, module_level: bool = False) -> set[str]:
    """The top-level modules that the package's source imports, anywhere in it
    but in `skip` (with `module_level`, only in the modules' own statements,
    not inside functions)."""
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        if skip is not None and path.is_relative_to(skip):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body if module_level else ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names} - {"sbi_alfi"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_a_declared_runtime_dependency():
    requirements = metadata.requires("sbi-alfi")
    runtime = {
        canonical(re.match(r"[A-Za-z0-9_.-]+", r).group())
        for r in requirements
        if "extra ==" not in r
    }
    optional = {
        canonical(re.match(r"[A-Za-z0-9_.-]+", r).group())
        for r in requirements
        if any(f'extra == "{extra}"' in r for extra in USER_EXTRAS)
    }
    assert optional, "the user-facing extras declare something"
    distributions = metadata.packages_distributions()
    modules = imported_modules()
    assert {"torch", "sbi", "sklearn", "scipy"} <= modules  # the scan sees them
    # benchmark-only imports stay in the benchmark's room
    assert not BENCHMARK_ONLY & imported_modules(skip=PACKAGE / "benchmark")
    modules -= BENCHMARK_ONLY
    undeclared = {
        module: distributions.get(module)
        for module in modules
        if not {canonical(d) for d in distributions.get(module, [])}
        & (runtime | optional)
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    # An extra's module is imported inside the function that needs it, so that
    # the package imports without it.
    top_level = imported_modules(module_level=True)
    assert not top_level & {m for m in modules if canonical(m) in optional}
