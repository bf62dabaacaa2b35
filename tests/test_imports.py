"""Imports point one way: no import cycle inside livetwin/ and no import up the package map.

The package is read with `ast`, never imported. Function-level imports count like module-level
ones (they run too, only later). Imports under `if TYPE_CHECKING:` never run: they cannot form a
cycle and are left out of the layer order, with one exception: nothing below the composition
root names `livetwin.platform`, not even in a type hint (no service holds the Platform).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "livetwin"

# The package map as data, lowest layer first. A unit is a module or a package named relative to
# `livetwin` ("" is the package's own __init__, the facade that re-exports `Platform`). A module
# may import its own unit and any unit of a LOWER layer; units of one layer are peers and do not
# import each other. Every module must belong to a unit, so a new top-level one is placed here.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("timefmt", "settings", "namespaces", "ports"),  # ports only names higher types in hints
    ("outbound",),  # the one policy of outbound HTTP destinations (resolves names: not pure)
    ("expr",),
    ("spec",),  # twin types as data; compiled with expressions
    # pure computation: the engine (with engine/batch.py, the batch vocabulary it applies and
    # the journal stores) and the model adapters
    ("engine", "models"),
    # filters run models; ingest/observations.py turns checked rows into engine batches: the
    # normalised form the journal and the core take in (pure, so it sits below them)
    ("calibrate", "ingest.observations"),
    ("store",),
    ("journal",),
    ("core",),
    ("query",),
    # services: independent of one another; the scheduler records lineage in the registry and
    # knows no jobs; jobs build on both (and on the alarm service's vocabulary); interop
    # converts types and twins to and from the twin standards
    ("ingest", "actions", "registry", "auth", "interop", "backtest", "scenario", "backup"),
    ("schedule",),
    ("jobs", "tenant"),  # tenant: a namespace as a whole (export, delete), over the services
    ("platform", "client"),  # the composition root; the SDK for a remote server (httpx)
    ("",),  # `livetwin.Platform`
    ("examples", "ui"),
    ("api",),
    # cluster mode: shards (cores in Ray actors) and the front end the api's routes serve over
    # them; a shard keeps the api's live feed
    ("cluster",),
    ("cli",),
]

# Modules that belong to another unit than their folder says (none today; keep it that way).
UNIT_OF_MODULE: dict[str, str] = {}

# Lazy imports that close a cycle on purpose: (importer, imported) -> why.
ALLOWED_CYCLE_EDGES = {
    ("models.base", "models.fmu"): "resolve_model loads the FMU adapter only for 'fmu:' refs, "
    "so FMPy stays an optional extra",
}

# Pure layers never import a database driver, a network client or a web framework.
PURE_UNITS = {"errors", "timefmt", "settings", "namespaces", "ports", "expr", "spec", "engine"}
PURE_UNITS |= {"ingest.observations", "models", "calibrate"}
FORBIDDEN_IN_PURE = (
    "sqlite3",
    "psycopg",
    "psycopg2",
    "psycopg_pool",
    "asyncpg",
    "httpx",
    "requests",
    "urllib3",
    "urllib.request",
    "http.client",
    "aiohttp",
    "paho",
    "socket",
    "smtplib",
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
)

# TEMPORARY: upward imports in files other branches of issue 11 are converting right now.
# (importing file, imported module) -> reason. The lead empties this list when merging; an
# entry that no longer matches an offence fails the test, so the list can only shrink.
PENDING_UPWARD: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency of module `source` on module `target`."""

    source: str  # module names relative to livetwin: "schedule.workflow", "" for the package
    target: str
    file: str  # path relative to the repository root
    line: int
    type_only: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {_dotted(self.source)} imports {_dotted(self.target)}"


def _dotted(module: str) -> str:
    return "livetwin" + (f".{module}" if module else "")


def _modules() -> dict[str, Path]:
    """Every module of the package by relative name ("engine.engine", "engine", "")."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()
DOTTED = {_dotted(name) for name in MODULES}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The livetwin modules an import statement loads (relative names)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = module.split(".")[: None if is_package else -1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(filter(None, ["livetwin", *package, node.module]))
        # `from pkg import sub` loads the submodule, `from pkg import name` loads pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in DOTTED else base for a in node.names]
    for name in dict.fromkeys(names):  # once per statement, in order
        if name == "livetwin" or name.startswith("livetwin."):
            yield name.removeprefix("livetwin").removeprefix(".")


def edges_of(module: str, source: str, file: str, is_package: bool = False) -> list[Edge]:
    """The imports of one module's source, at any depth, in line order."""
    tree = ast.parse(source, filename=file)
    hints = _type_checking_lines(tree)
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, is_package, node):
                if target != module:
                    edges.append(Edge(module, target, file, node.lineno, node.lineno in hints))
    return sorted(edges, key=lambda e: e.line)


EDGES = [
    edge
    for module, path in MODULES.items()
    for edge in edges_of(
        module, path.read_text(), str(path.relative_to(ROOT)), path.name == "__init__.py"
    )
]


def unit_of(module: str) -> str:
    """The unit of the package map that a module belongs to (longest matching name)."""
    for name, unit in UNIT_OF_MODULE.items():
        if module == name or module.startswith(name + "."):
            return unit
    units = sorted((u for layer in LAYERS for u in layer), key=len, reverse=True)
    for unit in units:
        if module == unit or (unit and module.startswith(unit + ".")):
            return unit
    raise AssertionError(f"{_dotted(module)} is in no unit: place it in LAYERS ({__file__})")


LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def why_wrong(edge: Edge) -> str | None:
    """Why an import breaks the package map (None when it does not)."""
    src, dst = unit_of(edge.source), unit_of(edge.target)
    if src == dst:
        return None
    here, there = LAYER_OF[src], LAYER_OF[dst]
    if edge.type_only and not there >= LAYER_OF["platform"] > here:
        return None  # a type hint; only the Platform may not be named below it
    if there > here:
        return f"'{src}' (layer {here}) must not import '{dst}' (layer {there})"
    if there == here:
        return f"'{src}' and '{dst}' are peers (layer {here}) and must not import each other"
    return None


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), type hints left out."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for edge in EDGES:
        if not edge.type_only and (edge.source, edge.target) not in ALLOWED_CYCLE_EDGES:
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_every_module_has_a_place_in_the_package_map():
    for module in MODULES:
        unit_of(module)
    named = [u for layer in LAYERS for u in layer]
    assert len(named) == len(set(named)), "a unit is listed twice in LAYERS"


def test_no_import_cycle_inside_the_package():
    report = []
    for component in _cycles():
        members = set(component)
        report.append("a cycle among " + ", ".join(_dotted(m) for m in component))
        report += [f"    {e}" for e in EDGES if e.source in members and e.target in members]
    assert not report, "import cycles (break them; see the package map):\n" + "\n".join(report)


def test_the_allowed_cycle_edges_exist():
    edges = {(e.source, e.target) for e in EDGES}
    stale = [pair for pair in ALLOWED_CYCLE_EDGES if pair not in edges]
    assert not stale, f"ALLOWED_CYCLE_EDGES names imports that are gone: {stale}"


def test_imports_point_down_the_package_map():
    offences, pending_seen = [], set()
    for edge in EDGES:
        why = why_wrong(edge)
        if why is None:
            continue
        key = (edge.file, edge.target)
        if key in PENDING_UPWARD:
            pending_seen.add(key)
        else:
            offences.append(f"{edge}: {why}")
    assert not offences, "imports that point up the package map:\n" + "\n".join(offences)
    stale = sorted(set(PENDING_UPWARD) - pending_seen)
    assert not stale, f"PENDING_UPWARD lists offences that are fixed; delete them: {stale}"


def test_pure_layers_load_no_driver_client_or_web_framework():
    offences = []
    for module, path in MODULES.items():
        if unit_of(module) not in PURE_UNITS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        hints = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                bad = [f for f in FORBIDDEN_IN_PURE if name == f or name.startswith(f + ".")]
                if bad and node.lineno not in hints:
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name}")
    assert not offences, "pure layers must stay free of I/O libraries:\n" + "\n".join(offences)


def test_the_checks_catch_what_they_are_for():
    """Function-level imports count, type hints only for the Platform, peers stay apart."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from livetwin.registry import lineage\n"
        "if TYPE_CHECKING:\n"
        "    from livetwin.journal.writer import IngestResult\n"
        "    from livetwin.platform import Platform\n"
        "def later():\n"
        "    from livetwin.jobs.baseline import train_baselines\n"
    )
    edges = edges_of("schedule.functions", source, "x.py")
    got = [(e.target, e.type_only, why_wrong(e) is not None) for e in edges]
    assert got == [
        ("registry.lineage", False, False),  # a lower service
        ("journal.writer", True, False),  # a type hint from below the Platform
        ("platform", True, True),  # the Platform, even as a hint
        ("jobs.baseline", False, True),  # function-level, and up
    ]
    peer = edges_of("actions.alarms", "from livetwin.registry import store", "x.py")
    assert "peers" in why_wrong(peer[0])
    assert unit_of("engine.batch") == "engine" and unit_of("ingest.mqtt") == "ingest"


# What `@task` users load: `import livetwin.schedule.workflow` stays light.
HEAVY_FOR_WORKFLOW = (
    "paho",  # MQTT
    "httpx",  # HTTP clients
    "requests",
    "urllib3",
    "livetwin.actions.webhooks",  # webhooks
    "livetwin.ingest.mqtt",
    "psycopg",  # database drivers (the stdlib's sqlite3 included)
    "psycopg_pool",
    "sqlite3",
    "livetwin.platform",
)


@pytest.mark.parametrize("module", ["livetwin.schedule.workflow"])
def test_importing_the_workflow_module_loads_no_driver_or_client(module):
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = done.stdout.split()
    heavy = [h for h in HEAVY_FOR_WORKFLOW if any(m == h or m.startswith(h + ".") for m in loaded)]
    assert not heavy, f"import {module} loads {heavy}"


def test_the_scheduler_package_still_exports_its_names():
    """`livetwin.schedule` loads its names on first use; every exported name is there."""
    import livetwin.schedule as schedule
    from livetwin.schedule import Scheduler
    from livetwin.schedule.service import Scheduler as Defined

    assert Scheduler is Defined
    assert all(getattr(schedule, name) is not None for name in schedule.__all__)
    with pytest.raises(AttributeError):
        schedule.nothing_here  # noqa: B018
