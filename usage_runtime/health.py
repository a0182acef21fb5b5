"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from the component's loop.

prometheus-client's ``start_http_server`` serves ``/metrics`` only, from a thread. The
readiness answer has to ask NATS and the database, whose clients live on the event loop,
so this small HTTP/1.1 server lives on the loop too: every request is read with a
deadline, answered, and its connection closed. It is shared by the shipper and the
billing consumer (:mod:`shipper.metrics`, :mod:`billing.metrics`).

* ``/healthz``: 200 while the process and its loop run (a loop stuck in a long call
  cannot answer, which is what a liveness probe should see).
* ``/readyz``: 200 when connected to NATS, the stream answers and the database answers;
  503 with a one-line reason otherwise. Reasons name a state or an exception type,
  never a message that could carry a credential or a payload; the shipper's reason is
  the problem it is waiting out (``cannot connect to nats nats://h:4222: connection
  refused (since 08:14:02)``), whose URLs are redacted like its log lines.
* ``/metrics``: the component's own registry (never the global one, so several
  components can live in one process), refreshed first by the component's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger("usage_runtime.health")

#: None when ready, else the short reason why not.
Readiness = Callable[[], Awaitable[str | None]]
#: Brings values read at scrape time (database counts) up to date before ``/metrics``.
Refresh = Callable[[], Awaitable[None]]

#: A probe (NATS round trip, database query) that takes longer than this counts as down.
PROBE_TIMEOUT = 1.0
#: Longest a client may take to send its request, and we to send the answer.
_IO_TIMEOUT = 5.0
#: Request line plus headers; a scraper sends a few hundred bytes.
_REQUEST_LIMIT = 16 * 1024
#: Longest ``/metrics`` waits for its refresh before serving the values it has.
_REFRESH_TIMEOUT = 2.0


class HealthServer:
    """Serves one registry and one readiness check on ``host:port`` (0 = a free port)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        ready: Readiness,
        refresh: Refresh | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self._port = port
        self._ready = ready
        self._refresh = refresh
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port (the chosen one when started with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; an address in use raises :class:`OSError` here, at start-up."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=_REQUEST_LIMIT
        )
        logger.info(
            "serving /metrics, /healthz and /readyz on %s",
            self.url,
            extra={"action": "metrics_serving", "port": self.port},
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # A scraper that holds its connection open must not hold up a shutdown.
        for writer in list(self._clients):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_IO_TIMEOUT):
                await server.wait_closed()

    # -- one request ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            try:
                async with asyncio.timeout(_IO_TIMEOUT):
                    request = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # a port scanner, a half-sent or an oversized request: no answer
            method, path, accept = _parse(request)
            try:
                status, content_type, body = await self._answer(method, path, accept)
            except Exception as exc:  # a collector's bug: answer 500, keep serving
                logger.exception("%s failed", path, extra={"action": "metrics_request_failed"})
                status, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain"
                body = f"{type(exc).__name__}\n".encode()
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head if method == "HEAD" else head + body)
            async with asyncio.timeout(_IO_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away; nothing to tell it
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _answer(self, method: str, path: str, accept: str) -> tuple[HTTPStatus, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, text, b"GET or HEAD only\n"
        if path == "/metrics":
            await self._refreshed()
            encode, content_type = choose_encoder(accept)
            return HTTPStatus.OK, content_type, encode(self.registry)
        if path == "/healthz":
            return HTTPStatus.OK, text, b"ok\n"
        if path == "/readyz":
            try:
                async with asyncio.timeout(3 * PROBE_TIMEOUT):
                    reason = await self._ready()
            except TimeoutError:
                reason = "readiness check timed out"
            if reason is None:
                return HTTPStatus.OK, text, b"ready\n"
            return HTTPStatus.SERVICE_UNAVAILABLE, text, f"not ready: {reason}\n".encode()
        return HTTPStatus.NOT_FOUND, text, b"/metrics, /healthz or /readyz\n"

    async def _refreshed(self) -> None:
        if self._refresh is None:
            return
        try:
            async with asyncio.timeout(_REFRESH_TIMEOUT):
                await self._refresh()
        except TimeoutError:
            # Serve what we have: a slow database must not make the scrape fail too.
            logger.debug("metrics refresh timed out; serving the previous values")


def _parse(request: bytes) -> tuple[str, str, str]:
    """Method, path (query dropped) and Accept header of a request head."""
    lines = request.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return "", "", ""
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return parts[0], parts[1].split("?", 1)[0], accept


# -- probes shared by the shipper and the billing consumer ---------------------------------


async def nats_problem(client: Client | None, stream: str | None) -> str | None:
    """Why NATS is not usable (not connected, stream missing or silent), or None."""
    if client is None or client.is_closed:
        return "not connected to NATS"
    if not client.is_connected:
        return "NATS connection lost, reconnecting"
    if stream is None:
        return "no stream bound yet"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await client.jetstream(timeout=PROBE_TIMEOUT).stream_info(stream)
    except nats.js.errors.NotFoundError:
        return f"stream {stream} not found"
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        return f"stream {stream} did not answer ({type(exc).__name__})"
    return None
