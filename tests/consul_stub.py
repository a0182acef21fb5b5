"""A stand-in for a Consul agent's HTTP API, small enough to read, real enough for py-consul.

No Consul binary can be had here, so discovery is tested against this: a stdlib HTTP server
on a free loopback port that answers ``GET /v1/health/service/<name>`` with the JSON shapes
Consul itself returns, so the code under test goes through the real ``consul.Consul`` client.

What py-consul 1.8 needs from the answer (``consul/callback.py``, ``CB.json(index=True)``): a
JSON body and an ``X-Consul-Index`` header, without which it raises ``ConsulException``. It
sends ``passing=1`` for ``passing=True``, the ACL token as an ``X-Consul-Token`` header, and
``index``/``wait`` for a blocking query. A 403 becomes ``ACLPermissionDenied``, a 5xx a
plain ``ConsulException``.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["ConsulStub", "RecordedRequest", "ServiceInstance"]

_SERVICE_PATH = re.compile(r"^/v1/health/service/(?P<name>[^/]+)$")
_DURATION = re.compile(r"([\d.]+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A blocking query is held at most this long here (Consul's default is 5 minutes, far too
# long for a test that forgot to pass ``wait``).
_MAX_BLOCK_SECONDS = 10.0


@dataclass(frozen=True)
class ServiceInstance:
    """One registered instance of a service, as Consul would report it."""

    address: str
    port: int
    # Consul leaves Service.Address empty when the service was registered without one; the
    # client must then use the node's address.
    empty_service_address: bool = False
    passing: bool = True
    node: str = ""
    tags: tuple[str, ...] = ()

    def entry(self, service: str, index: int) -> dict[str, Any]:
        node = self.node or f"node-{self.address}-{self.port}"
        status = "passing" if self.passing else "critical"
        return {
            "Node": {
                "ID": "",
                "Node": node,
                "Address": self.address,
                "Datacenter": "dc1",
                "TaggedAddresses": {"lan": self.address, "wan": self.address},
                "Meta": {},
                "CreateIndex": index,
                "ModifyIndex": index,
            },
            "Service": {
                "ID": f"{service}-{self.address}-{self.port}",
                "Service": service,
                "Tags": list(self.tags),
                "Address": "" if self.empty_service_address else self.address,
                "Meta": {},
                "Port": self.port,
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False,
                "CreateIndex": index,
                "ModifyIndex": index,
            },
            "Checks": [
                {
                    "Node": node,
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "Output": "Agent alive and reachable",
                    "ServiceID": "",
                    "ServiceName": "",
                    "ServiceTags": [],
                },
                {
                    "Node": node,
                    "CheckID": f"service:{service}-{self.address}-{self.port}",
                    "Name": f"Service '{service}' check",
                    "Status": status,
                    "Output": "",
                    "ServiceID": f"{service}-{self.address}-{self.port}",
                    "ServiceName": service,
                    "ServiceTags": list(self.tags),
                },
            ],
        }


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    token: str | None
    headers: dict[str, str] = field(default_factory=dict)


class ConsulStub:
    """A Consul health API on ``host:port``; set what it answers, read what it was asked."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        acl_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        # With acl_token set, requests without that exact token get Consul's 403.
        self.acl_token = acl_token
        # With ssl_context (a server-side context), the stub speaks HTTPS, as an agent with
        # TLS on its HTTP API does; a failed handshake just drops that connection.
        self.scheme = "https" if ssl_context is not None else "http"
        self.requests: list[RecordedRequest] = []
        self._services: dict[str, list[ServiceInstance]] = {}
        self._index = 1
        self._failures: list[tuple[int, str]] = []
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.host: str = str(self._server.server_address[0])
        self.port: int = int(self._server.server_address[1])
        # serve_forever checks for shutdown() at this interval; the default 0.5 s would add
        # half a second to every test's teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="consul-stub",
            daemon=True,
        )
        self._started = False
        self._closing = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def index(self) -> int:
        """The value of X-Consul-Index; it grows with every change, as in Consul."""
        with self._changed:
            return self._index

    def set_service(
        self,
        name: str,
        instances: Iterable[tuple[str, int] | ServiceInstance],
        *,
        empty_service_address: bool = False,
    ) -> None:
        """Replace the healthy-or-not instances of ``name``.

        ``(host, port)`` tuples become passing instances; with ``empty_service_address`` their
        ``Service.Address`` is empty and only ``Node.Address`` carries the host.
        """
        resolved = [
            item
            if isinstance(item, ServiceInstance)
            else ServiceInstance(item[0], item[1], empty_service_address=empty_service_address)
            for item in instances
        ]
        with self._changed:
            self._services[name] = resolved
            self._index += 1
            self._changed.notify_all()

    def remove_service(self, name: str) -> None:
        with self._changed:
            self._services.pop(name, None)
            self._index += 1
            self._changed.notify_all()

    def fail_next(self, count: int = 1, *, status: int = 500, body: str = "rpc error") -> None:
        """Answer the next ``count`` requests with an error, as an unwell agent would."""
        with self._changed:
            self._failures.extend([(status, body)] * count)

    def requests_for(self, service: str) -> list[RecordedRequest]:
        path = f"/v1/health/service/{service}"
        return [r for r in list(self.requests) if r.path == path]

    def start(self) -> Self:
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def stop(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()  # release blocking queries
        if self._started:
            self._server.shutdown()
            self._started = False
        self._server.server_close()

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
        return f"<ConsulStub {self.address} services={sorted(self._services)}>"

    # -- request handling (called from the server's threads) ---------------------------

    def _answer(self, request: RecordedRequest) -> tuple[int, str, int]:
        """Return (status, body, index) for one request."""
        self.requests.append(request)
        with self._changed:
            if self._failures:
                status, body = self._failures.pop(0)
                return status, body, self._index
        if self.acl_token is not None and request.token != self.acl_token:
            return 403, "Permission denied", self.index
        match = _SERVICE_PATH.match(request.path)
        if request.method != "GET" or match is None:
            return 404, f"stub does not serve {request.method} {request.path}", self.index
        name = urllib.parse.unquote(match["name"])
        with self._changed:
            self._block(request.query)
            instances = list(self._services.get(name, []))
            index = self._index
        passing_only = request.query.get("passing", ["0"])[-1] not in ("0", "false", "")
        tags = request.query.get("tag", [])
        entries = [
            instance.entry(name, index)
            for instance in instances
            if (instance.passing or not passing_only) and all(t in instance.tags for t in tags)
        ]
        # An unknown service is an empty list with 200, not a 404, in Consul.
        return 200, json.dumps(entries), index

    def _block(self, query: dict[str, list[str]]) -> None:
        # Blocking query: hold the answer until the index moves past the one the client has
        # seen, or its wait runs out. Called with self._changed held.
        seen = query.get("index")
        if not seen or not seen[-1].isdigit():
            return
        wait = _parse_wait(query.get("wait", [""])[-1])
        self._changed.wait_for(lambda: self._index > int(seen[-1]) or self._closing, wait)


def _parse_wait(text: str) -> float:
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
    return min(seconds or _MAX_BLOCK_SECONDS, _MAX_BLOCK_SECONDS)


def _handler_for(stub: ConsulStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            request = RecordedRequest(
                method=self.command,
                path=parsed.path,
                query=urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
                token=self.headers.get("X-Consul-Token"),
                headers=dict(self.headers.items()),
            )
            status, body, index = stub._answer(request)
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-Knownleader", "true")
            self.send_header("X-Consul-Lastcontact", "0")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _handle
        do_PUT = _handle
        do_POST = _handle
        do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            # Quiet: the requests are recorded on the stub for tests to assert on.
            return

    return Handler
