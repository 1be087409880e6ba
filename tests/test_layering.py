"""The package's imports run one way (api/cli → services → gateway → rag → auth → kernel), with no cycle,
and Flask is imported only by `webui_api.api`. Every import counts, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "webui_api"
KERNEL = {"config", "errors", "db", "dialect", "locks", "upstream", "telemetry", "version"}
# Lower number = lower layer; a module may import only its own layer or lower ones.
# mock_backend: a stand-alone tool the CLI runs (stdlib only), in the top layer so no service layer imports it.
LAYERS = {"api": 5, "cli": 5, "mock_backend": 5, "services": 4, "gateway": 3, "rag": 2, "auth": 1,
          **{name: 0 for name in KERNEL}}
FLASK_PACKAGES = ("flask", "flask_smorest", "werkzeug", "webargs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of this package imported, top-level external packages imported) anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _classify(alias.name, known, internal, external)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                _classify(candidate if candidate in known else base, known, internal, external)
    return internal, external


def _absolute(package: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[:len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _classify(target: str, known: set[str], internal: set, external: set) -> None:
    if target == "webui_api" or target.startswith("webui_api."):
        internal.add(target if target in known else target.rpartition(".")[0])
    else:
        external.add(target.split(".")[0])


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = all_modules()
    known = set(modules)
    edges, externals = {}, {}
    for name, path in modules.items():
        edges[name], externals[name] = imports_of(name, path, known)
        edges[name].discard(name)
    return edges, externals


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer():
    unplaced = [name for name in all_modules() if name != "webui_api" and layer(name) is None]
    assert unplaced == []


def test_imports_run_downward():
    edges, _ = graph()
    upward = sorted(f"{src} -> {dst}" for src, targets in edges.items() for dst in targets
                    if src != "webui_api" and dst != "webui_api" and layer(dst) > layer(src))
    assert upward == []


def test_nothing_imports_the_package_root():
    edges, _ = graph()
    assert sorted(src for src, targets in edges.items() if "webui_api" in targets) == []


def test_no_import_cycle():
    edges, _ = graph()
    assert find_cycle(edges) is None


def test_flask_only_in_the_http_layer():
    _, externals = graph()
    outside = sorted(f"{name} imports {pkg}" for name, pkgs in externals.items() for pkg in pkgs
                     if pkg in FLASK_PACKAGES and not name.startswith("webui_api.api"))
    assert outside == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_cycle_finder_finds_cycles(edges, expected):
    assert find_cycle(edges) == expected


def test_the_graph_sees_function_level_imports():
    edges, _ = graph()
    assert "webui_api.api.factory" in edges["webui_api"]  # create_app imports it lazily
