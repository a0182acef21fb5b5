"""The house's layers, checked by walking every import of every module.

    usage_demo, bench                     on top: may use everything below
    shipper        billing                side by side: never import each other
    outbox         usage_runtime          the ground: import nothing else of ours

``tests`` are apart: no production module and no benchmark imports them (the fault
scenarios that both the tests and ``bench/soak.py`` run live in ``bench/faults``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = frozenset({"outbox", "usage_runtime", "shipper", "billing", "usage_demo", "bench", "tests"})
ALLOWED: dict[str, frozenset[str]] = {
    "outbox": frozenset({"outbox"}),
    "usage_runtime": frozenset({"usage_runtime"}),
    "shipper": frozenset({"shipper", "outbox", "usage_runtime"}),
    "billing": frozenset({"billing", "outbox", "usage_runtime"}),
    "usage_demo": OURS - {"tests", "bench"},
    "bench": OURS - {"tests"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of this project that ``path`` imports (absolute imports only;
    the code base uses no relative ones, which this test would see as a violation)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add(f"relative import in {path.name}")
                continue
            names = [node.module or ""]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & OURS
    return found


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    assert modules(package), f"no modules found for {package}"
    broken = {}
    for path in modules(package):
        name = path.relative_to(REPO).as_posix()
        extra = imported_packages(path) - ALLOWED[package]
        if extra:
            broken[name] = sorted(extra)
    assert broken == {}, f"imports that cross the layers: {broken}"


def test_the_walker_sees_a_crossing_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom shipper.config import X\nimport billing.store as s\n")
    assert imported_packages(module) == {"shipper", "billing"}


def test_the_nats_server_runner_is_not_in_the_production_packages() -> None:
    # The embedded nats-server (spawning, SIGSTOP freeze/thaw, clusters) is test and demo
    # machinery: it lives with the demo, its one installed user.
    for package in ("outbox", "usage_runtime", "shipper", "billing"):
        assert not (REPO / package / "natsserver.py").exists()
    assert (REPO / "usage_demo" / "natsserver.py").exists()
