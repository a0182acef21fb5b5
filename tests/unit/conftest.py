"""The unit tier: the shipper's drain against :class:`shipper.testing.InMemoryLink` and a
real SQLite file, with no nats-server anywhere.

Nothing here may find or start a nats-server: the fixture below makes every way to do so
fail the test loudly (the binary look-up, the runner's ``start``, any subprocess whose
program is ``nats-server``), and ``test_tier.py`` checks that no module of the tier
imports the server runner. The whole tier runs in well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NO_SERVER = "the unit tier runs with no nats-server: this test tried to use one"


def _refuse(*_args: object, **_kwargs: object) -> Any:
    pytest.fail(NO_SERVER, pytrace=False)


class _NoNatsServerPopen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [args] if isinstance(args, str | bytes | Path) else list(args)
        program = Path(str(argv[0] if argv else "")).name
        if program.startswith("nats-server"):
            _refuse()
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _no_nats_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", _NoNatsServerPopen)
    monkeypatch.setenv("NATS_SERVER_BIN", "/nonexistent/the-unit-tier-has-no-nats-server")
    # The integration tier's plugins may have loaded the runner: disarm it where it is.
    for name in ("usage_demo.natsserver", "usage_demo.natscluster", "tests.fixtures.nats"):
        module = sys.modules.get(name)
        if module is None:
            continue
        for attribute in ("find_nats_server_binary",):
            if hasattr(module, attribute):
                monkeypatch.setattr(module, attribute, _refuse)
        for runner in ("NatsServer", "NatsCluster"):
            if hasattr(module, runner):
                monkeypatch.setattr(getattr(module, runner), "start", _refuse)
    yield


@pytest.fixture
def nats_server_binary() -> str:
    _refuse()
    raise AssertionError("unreachable")
