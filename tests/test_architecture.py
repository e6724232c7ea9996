"""The layering the design card asks for, checked on the source itself: which packages import
which, no import circle inside the library, no path tricks, and no branching on model names
outside the model-kind registry."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "cxr_pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules a file imports at module level or anywhere inside it, absolute names."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import kinds`
    return found


LIBRARY_FILES = sorted(LIBRARY.rglob("*.py"))
LIBRARY_MODULES = {module_name(p): p for p in LIBRARY_FILES}


def library_imports(path: Path) -> set[str]:
    return {name for name in imports_of(path) if name in LIBRARY_MODULES}


def test_the_library_imports_no_dagster():
    offenders = {
        module_name(p)
        for p in LIBRARY_FILES
        if any(name == "dagster" or name.startswith(("dagster.", "dagster_")) for name in imports_of(p))
    }
    assert not offenders


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("cxr_pipeline.data", ("cxr_pipeline.models", "cxr_pipeline.kinds", "cxr_pipeline.evaluation")),
        (
            "cxr_pipeline.models",
            (
                "cxr_pipeline.evaluation",
                "cxr_pipeline.tracking",
                "cxr_pipeline.kinds",
                "cxr_pipeline.serving",
                "cxr_pipeline.registration",
                "cxr_pipeline.app",
            ),
        ),
        ("cxr_pipeline.metrics", ("cxr_pipeline.evaluation", "cxr_pipeline.kinds", "cxr_pipeline.reports")),
        ("cxr_pipeline.reports", ("cxr_pipeline.evaluation", "cxr_pipeline.kinds")),
        ("cxr_pipeline.evaluation", ("cxr_pipeline.kinds", "cxr_pipeline.serving", "cxr_pipeline.registration")),
    ],
)
def test_imports_go_one_way(package, forbidden):
    offenders = {
        (name, imported)
        for name, path in LIBRARY_MODULES.items()
        if name.startswith(package)
        for imported in library_imports(path)
        if imported.startswith(forbidden)
    }
    assert not offenders


def test_no_import_circle_inside_the_library():
    graph = {name: {i for i in library_imports(path) if i != name} for name, path in LIBRARY_MODULES.items()}
    # a package's __init__ re-exporting its modules is not a circle through them
    graph = {name: {i for i in edges if not name.startswith(i + ".")} for name, edges in graph.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not circles


def test_no_path_tricks_in_bench_scripts_or_tests():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("bench", "experiments", "scripts", "tests")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "test_architecture.py" and re.search(r"sys\.path\.(insert|append)|PYTHONPATH", p.read_text())
    ]
    assert not offenders


def test_no_dispatch_on_model_names_outside_the_registry():
    names = "latent_sr|arbitrary_sr|class_ddpm|denoiser|text_ldm|report_encoder|vae|classifier"
    pattern = re.compile(rf"""(kind|model)\s*==\s*["']({names})|\.startswith\(\s*["']({names})""")
    outside = [
        p
        for folder in ("cxr_pipeline", "assets", "resources", "jobs", "scripts", "bench", "experiments")
        for p in (ROOT / folder).rglob("*.py")
        if "kinds" not in p.relative_to(ROOT).parts
    ]
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in outside
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders


def test_tests_mirror_the_source_tree():
    """Every test module sits in the folder of the package it tests; helper programs in helpers/."""
    packages = {"data", "models", "metrics", "reports", "evaluation", "assets", "app", "serving"}
    tests = ROOT / "tests"
    loose = [p.name for p in tests.glob("*.py") if p.name not in ("__init__.py", "conftest.py", "test_architecture.py")]
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert not loose and folders <= packages | {"helpers"}
    assert all((tests / folder / "__init__.py").exists() for folder in folders)
    assert not [p for p in (tests / "helpers").glob("test_*.py")]


def test_a_long_library_file_is_one_idea_named_in_the_architecture_doc():
    listed = set(re.findall(r"^\| `([\w/.]+\.py)` \|", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    long_files = {str(p.relative_to(LIBRARY)) for p in LIBRARY_FILES if len(p.read_text().splitlines()) > 400}
    assert long_files <= listed, f"over 400 lines and not in docs/architecture.md: {sorted(long_files - listed)}"
