"""The code's shape, checked: imports point one way, no cycles, small server files, states as enums.

A newcomer relies on these to guess where a thing lives: routes call services, services use tables,
never the reverse; `fleet_server` → `model_zoo` → `edge_agent`; no import hidden in a function to dodge
a cycle (only heavy or optional engines are imported lazily).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "model_zoo", "fleet_server")
# engines a device or a server may not have, or that take seconds to import: these stay lazy
LAZY_OK = (
    "torch",
    "torchvision",
    "tensorrt",
    "cuda",
    "onnx",
    "onnxruntime",
    "onnxconverter_common",
    "faster_coco_eval",
    "boto3",
    "botocore",
    "amqtt",
    "tqdm",
    "ray",
    "ctypes",
    "model_zoo.models",
    "model_zoo.train",
    "model_zoo.training",
    "fleet_server.cli.server_cli",  # the whole server application: the CLI's client commands do without it
)
ROUTES = ("fleet_server.api", "fleet_server.console", "fleet_server.cli", "fleet_server.app")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return None


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported project module, line, inside a function)]"""
    out: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
    for mod, path in MODULES.items():
        _collect(mod, path, out)
    return out


def _collect(mod: str, path: Path, out: dict[str, list[tuple[str, int, bool]]]) -> None:
    is_pkg = path.name == "__init__.py"

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(up[: len(up) - child.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] or [base]
            for n in names:
                out[mod].append((_resolve(n) or n, child.lineno, in_func))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)


IMPORTS = _imports()


def _edges(m: str) -> set[str]:
    return {t for t, _, _ in IMPORTS[m] if t in MODULES and t != m}


def test_no_import_cycle_anywhere() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan: every strongly connected component of size > 1 is a cycle
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in _edges(v):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(MODULES):
        if m not in index:
            strong(m)
    assert cycles == []


@pytest.mark.parametrize(
    "lower, higher",
    [("edge_agent", "model_zoo"), ("edge_agent", "fleet_server"), ("model_zoo", "fleet_server")],
)
def test_packages_import_downwards_only(lower: str, higher: str) -> None:
    bad = [
        f"{m}:{line} -> {t}"
        for m in MODULES
        if m.startswith(lower)
        for t, line, _ in IMPORTS[m]
        if t.startswith(higher)
    ]
    assert bad == []


def _is(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_inside_the_server_routes_call_services_never_the_reverse() -> None:
    """Domain code never imports a route, the console, the CLI or the service wiring; the API never imports
    the CLI or the console; the console uses the API's auth dependencies, not its route handlers."""
    bad = []
    for m in MODULES:
        if not m.startswith("fleet_server"):
            continue
        for t, line, _ in IMPORTS[m]:
            if not _is(m, ROUTES) and (_is(t, ROUTES) or (t == "fleet_server.services" and m != t)):
                bad.append(f"{m}:{line} -> {t} (domain imports a route or the wiring)")
            elif _is(m, ("fleet_server.api",)) and _is(t, ("fleet_server.cli", "fleet_server.console")):
                bad.append(f"{m}:{line} -> {t} (the API imports the CLI or the console)")
            elif _is(m, ("fleet_server.console",)) and _is(t, ("fleet_server.api.routes", "fleet_server.cli")):
                bad.append(f"{m}:{line} -> {t} (the console imports a route handler)")
    assert bad == []


def test_tables_import_only_tables_states_and_the_protocol() -> None:
    allowed = (
        "fleet_server.db",
        "fleet_server.strenum",
        "fleet_server.audit",
        "fleet_server.asgi",
        "edge_agent.protocol",
    )
    bad = []
    for m in MODULES:
        if not (m.startswith("fleet_server") and m.endswith(("tables", ".states")) or m == "fleet_server.audit"):
            continue
        for t, line, _ in IMPORTS[m]:
            if t in MODULES and not (_is(t, allowed) or t.endswith((".tables", ".states"))):
                bad.append(f"{m}:{line} -> {t}")
    assert bad == []


def test_no_server_file_is_long() -> None:
    long = {str(p.relative_to(ROOT)): n for m, p in MODULES.items() if m.startswith("fleet_server")
            if (n := len(p.read_text().splitlines())) > 450}  # fmt: skip
    assert long == {}


def test_only_heavy_engines_are_imported_inside_functions() -> None:
    hidden = [
        f"{m}:{line} imports {t}"
        for m in MODULES
        for t, line, in_func in IMPORTS[m]
        if in_func and not _is(t, LAZY_OK) and t.split(".")[0] not in LAZY_OK
    ]
    assert hidden == []
