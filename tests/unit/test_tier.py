"""The unit tier keeps to itself: none of its modules, nor anything of ours they import,
reaches the nats-server runner or the integration fixtures that start servers."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import NO_SERVER

UNIT = Path(__file__).parent
OURS = ("tests", "shipper", "outbox", "usage_runtime", "usage_demo", "billing")
#: Modules that find, start or wrap a nats-server.
FORBIDDEN = {"usage_demo.natsserver", "usage_demo.natscluster", "tests.fixtures.nats"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def _source(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def test_no_module_of_the_unit_tier_reaches_the_nats_server_runner() -> None:
    seen: dict[str, str] = {}  # module -> who imported it
    todo = [(f"tests.unit.{path.stem}", "") for path in sorted(UNIT.glob("*.py"))]
    while todo:
        module, by = todo.pop()
        if module in seen:
            continue
        seen[module] = by
        path = _source(module)
        if path is None:
            continue
        todo.extend((name, module) for name in _imports(path))
    reached = sorted(FORBIDDEN & seen.keys())
    chains = []
    for module in reached:
        chain = [module]
        while seen.get(chain[-1]):
            chain.append(seen[chain[-1]])
        chains.append(" <- ".join(chain))
    assert not reached, chains
    assert "shipper.testing" in seen  # the walk did follow the imports


def test_starting_a_nats_server_here_fails_the_test_loudly() -> None:
    for argv in (["nats-server", "--version"], ["/opt/bin/nats-server", "-js"]):
        with pytest.raises(pytest.fail.Exception, match=NO_SERVER):
            subprocess.Popen(argv)
    runner = sys.modules.get("usage_demo.natsserver")  # loaded by the integration plugins
    if runner is not None:
        with pytest.raises(pytest.fail.Exception, match=NO_SERVER):
            runner.find_nats_server_binary()
        with pytest.raises(pytest.fail.Exception, match=NO_SERVER):
            runner.NatsServer.start(object())
    done = subprocess.run([sys.executable, "-c", "print('other programs run')"], check=True)
    assert done.returncode == 0
