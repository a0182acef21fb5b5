"""A small JetStream cluster of real ``nats-server`` nodes on loopback, for the fault
scenarios that lose a stream leader (:mod:`usage_demo.natsserver` runs each node)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import nats
import nats.errors

from usage_demo.natsserver import NatsServer, NatsServerError, find_nats_server_binary

__all__ = ["NatsCluster"]

_ROUTES_LISTENING = r"Listening for route connections on"
_T = TypeVar("_T")


class NatsCluster:
    """``size`` JetStream nodes on loopback, routed to each other, each in its own store dir.

    Every node keeps its client and cluster ports across restarts, so ``kill(i)`` followed by
    ``restart(i)`` brings the same member back and clients find it at the same URL.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        name: str = "usage-test",
        host: str = "127.0.0.1",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.name = name
        self.host = host
        binary = binary or find_nats_server_binary()
        # Routes must name every peer's cluster port before any node starts, so these are
        # chosen up front (the client ports are still chosen by the servers themselves).
        cluster_ports = _free_ports(host, size)
        routes = ", ".join(f"nats-route://{host}:{p}" for p in cluster_ports)
        # server_name of each node, as JetStream reports it (e.g. a stream's leader).
        self.names = [f"{name}-n{i + 1}" for i in range(size)]
        self.nodes: list[NatsServer] = []
        for node_name, cluster_port in zip(self.names, cluster_ports, strict=True):
            config = (
                f'server_name: "{node_name}"\n'
                f"cluster {{\n"
                f'  name: "{name}"\n'
                f'  listen: "{host}:{cluster_port}"\n'
                f"  routes: [{routes}]\n"
                f"}}\n"
            )
            self.nodes.append(
                NatsServer(
                    self.base_dir / node_name,
                    host=host,
                    config_text=config,
                    binary=binary,
                    extra_args=extra_args,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> Self:
        """Start every node, then wait until JetStream has a meta leader and answers."""
        deadline = time.monotonic() + timeout
        try:
            # One node after the other, each listening for routes before the next starts.
            # Launched all at once, the first JetStream meta election was measured to fail
            # (split vote) in 2 starts of 25, costing 4-6 s more (the next election
            # timeout); staggered like this (~10 ms apart), in 1 start of about 400.
            for node in self.nodes:
                node._launch()
                node._wait_ready(deadline)
                node.wait_for_log(_ROUTES_LISTENING, max(0.0, deadline - time.monotonic()))
            self.wait_for_jetstream(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_jetstream(self, timeout: float = 15.0) -> None:
        """Wait until a JetStream API request through the running nodes gets an answer.

        An answer to ``$JS.API.INFO`` needs an elected meta leader; until then the nodes
        reply 503 or not at all.
        """
        urls = [node.url for node in self.nodes if node.running]
        deadline = time.monotonic() + timeout
        _run_in_thread(lambda: _wait_for_jetstream(urls, deadline))

    def index_of(self, server_name: str) -> int:
        """The node index of a server name, e.g. ``StreamInfo.cluster.leader``."""
        return self.names.index(server_name)

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 10.0) -> NatsServer:
        """Bring node ``index`` back (stopping it first if it is still up)."""
        return self.nodes[index].restart(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NatsCluster {self.name} {self.nodes!r}>"


async def _wait_for_jetstream(urls: list[str], deadline: float) -> None:
    last_error: BaseException | None = None

    async def quiet(_exc: Exception) -> None:
        # Refused connections while nodes boot are expected; nats-py would log each one.
        return None

    nc = await nats.connect(
        servers=urls,
        connect_timeout=1,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        error_cb=quiet,
    )
    # Requests sent before a meta leader exists are often never answered, so the first ones
    # get a short timeout (a quick retry); it grows so that a slow machine still gets through.
    request_timeout = 0.1
    try:
        while time.monotonic() < deadline:
            try:
                await nc.jetstream(timeout=request_timeout).account_info()
                return
            except TimeoutError as exc:  # the timeout was the wait: ask again at once
                last_error = exc
                request_timeout = min(request_timeout * 1.2, 1.0)
            except nats.errors.Error as exc:  # 503 (no meta leader yet), no responders
                last_error = exc
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    raise NatsServerError(f"JetStream did not answer in time: {last_error!r}")


def _run_in_thread(make: Callable[[], Awaitable[_T]]) -> _T:
    # The callers are synchronous and may themselves run inside an event loop (an async
    # test); a private loop in a worker thread works in both cases.
    async def main() -> _T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel says are free now; all held at once so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
