"""Connecting to NATS with the configured credentials and TLS, for both processes.

Credentials: user and password, a token, an NKey seed file or a ``.creds`` file (user
JWT and seed); TLS: the server is verified against ``tls_ca_file`` (else the system's
CAs), with an optional client certificate. :func:`auth_options` turns them into
``nats.connect`` arguments for the shipper and the billing consumer alike.

:func:`open_connection` is ``nats.connect`` with three differences that matter at start-up:

* A refusal (NATS answers "Authorization Violation", a TLS certificate is not accepted,
  a seed or ``.creds`` file cannot be read) stops the attempt at once with
  :class:`NatsRefused`, instead of nats-py retrying every server
  ``max_reconnect_attempts`` times; the caller decides whether that is fatal (the shipper
  and billing: yes before their first connection, no after it).
* Any other TLS failure stops the attempt too: nats-py never returns from a connect whose
  TLS handshake failed (it waits for ever to close that socket, nats.py issue 718).
* With TLS configured, a server that does not start TLS is refused: nats-py would
  otherwise carry on in plaintext without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client

from usage_runtime.signals import cancel_until_done

logger = logging.getLogger("usage_runtime.nats")

#: What to check when NATS refuses the connection, for the one-line start-up error.
CREDENTIAL_HINT = (
    "check --nats-user/--nats-password, --nats-token, --nats-nkey-seed or --nats-creds, "
    "and --tls-ca/--tls-cert/--tls-key"
)
#: How long closing an abandoned attempt may take (nats-py can hang there, see above).
_ABANDON_TIMEOUT = 1.0


class NatsRefused(Exception):
    """NATS refused the credentials, or TLS could not be agreed, or a credential file is
    unusable: retrying the same settings cannot help until someone changes them (or the
    server's). Transient for a process that was connected before (credentials may be
    rotated back); a start-up error otherwise."""


def refusal(exc: BaseException) -> str | None:
    """Why ``exc`` means "these settings are refused" rather than "NATS is away", or None."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return "authorization violation: the server refused the credentials"
    text = str(exc)
    lowered = text.lower()
    if "authorization violation" in lowered:
        return "authorization violation: the server refused the credentials"
    if "authentication expired" in lowered or "authentication revoked" in lowered:
        return f"the server refused the credentials ({text.removeprefix('nats: ')})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if any(word in reason for word in ("ALERT", "CERTIFICATE", "VERSION")):
            # e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED: the server wants a client certificate
            return f"TLS: the handshake was refused ({reason})"
    return None


def tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext | None:
    """A client context verifying the server with ``ca_file`` (else the system's CAs),
    presenting ``cert_file``/``key_file`` when given; None when nothing is configured."""
    if not (ca_file or cert_file):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file and key_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise NatsRefused(f"TLS files cannot be used: {exc}") from exc
    return context


class NatsAuthSettings(Protocol):
    """The credential and TLS settings both processes' configs carry, by the same names."""

    @property
    def nats_user(self) -> str | None: ...
    @property
    def nats_password(self) -> str | None: ...
    @property
    def nats_token(self) -> str | None: ...
    @property
    def nats_nkey_seed_file(self) -> str | None: ...
    @property
    def nats_creds_file(self) -> str | None: ...
    @property
    def tls_ca_file(self) -> str | None: ...
    @property
    def tls_cert_file(self) -> str | None: ...
    @property
    def tls_key_file(self) -> str | None: ...


def auth_options_of(settings: NatsAuthSettings) -> dict[str, Any]:
    """:func:`auth_options` for a process's config (the shipper's or billing's)."""
    return auth_options(
        user=settings.nats_user,
        password=settings.nats_password,
        token=settings.nats_token,
        nkey_seed_file=settings.nats_nkey_seed_file,
        creds_file=settings.nats_creds_file,
        tls_ca_file=settings.tls_ca_file,
        tls_cert_file=settings.tls_cert_file,
        tls_key_file=settings.tls_key_file,
    )


def auth_options(
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    nkey_seed_file: str | None = None,
    creds_file: str | None = None,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` carrying credentials and TLS."""
    options: dict[str, Any] = {}
    if user:
        options["user"] = user
        options["password"] = password or ""
    if token:
        options["token"] = token
    if nkey_seed_file:
        options["nkeys_seed"] = nkey_seed_file
    if creds_file:
        options["user_credentials"] = creds_file
    context = tls_context(tls_ca_file, tls_cert_file, tls_key_file)
    if context is not None:
        options["tls"] = context
    return options


def check_credential_files(options: Mapping[str, Any]) -> None:
    """Raise :class:`NatsRefused` when the seed or ``.creds`` file of ``options`` cannot
    be used (nats-py would fail on it with a bare ``TypeError`` or loop on it). The
    messages name the file, never its content."""
    seed_file = options.get("nkeys_seed")
    creds_file = options.get("user_credentials")
    if not (seed_file or creds_file):
        return
    try:
        import nkeys  # type: ignore[import-untyped]
    except ModuleNotFoundError as exc:
        raise NatsRefused(
            "NKey and .creds authentication need the nkeys package (nats-py[nkeys])"
        ) from exc
    path = str(seed_file or creds_file)
    what = "nkey seed file" if seed_file else ".creds file"
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise NatsRefused(f"{what} {path}: {reason}") from exc
    if seed_file:
        seed = next((line.strip() for line in lines if line.strip()), "")
    else:
        after = [i + 1 for i, line in enumerate(lines) if "BEGIN USER NKEY SEED" in line]
        has_jwt = any("BEGIN NATS USER JWT" in line for line in lines)
        seed = lines[after[0]].strip() if after and after[0] < len(lines) and has_jwt else ""
    try:
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception as exc:  # nkeys raises its own errors, and binascii/struct ones
        raise NatsRefused(f"{what} {path}: no valid NKey seed in it") from exc


def _uses_tls(client: Client) -> bool | None:
    """Whether ``client``'s socket is TLS; None when that cannot be seen (not TCP)."""
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    if writer is None:
        return None
    return writer.get_extra_info("ssl_object") is not None


async def _abandon(client: Client, attempt: asyncio.Future[Any]) -> None:
    """Stop a connect attempt and release its socket, without waiting for ever."""
    await cancel_until_done(attempt, _ABANDON_TIMEOUT)
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.transport.abort()  # what nats-py's own close can hang on
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_ABANDON_TIMEOUT):
            await client.close()


async def open_connection(
    servers: Sequence[str],
    options: Mapping[str, Any],
    *,
    error_cb: Callable[[Exception], Awaitable[None]],
    **callbacks: Any,
) -> Client:
    """``nats.connect(servers, **options, **callbacks)``, but a refusal raises
    :class:`NatsRefused` at once and a plaintext server is refused when TLS is
    configured (see the module's docstring). ``error_cb`` sees every other error."""
    check_credential_files(options)
    aborted: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    connecting = True

    async def on_error(exc: Exception) -> None:
        if connecting and not aborted.done():
            reason = refusal(exc)
            if reason is not None:
                aborted.set_result(NatsRefused(reason))
                return
            if isinstance(exc, ssl.SSLError):
                aborted.set_result(exc)  # see nats.py issue 718 in the module docstring
                return
        await error_cb(exc)

    def once_connected(callback: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def call() -> None:  # an abandoned attempt's close is not the caller's news
            if not connecting:
                await callback()

        return call

    client = Client()
    wrapped: dict[str, Any] = {name: once_connected(cb) for name, cb in callbacks.items()}
    attempt = asyncio.ensure_future(
        client.connect(servers=list(servers), error_cb=on_error, **wrapped, **options)
    )
    try:
        await asyncio.wait((attempt, aborted), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not attempt.done():
            await _abandon(client, attempt)
    if not attempt.done() or attempt.cancelled() or attempt.exception() is not None:
        if aborted.done():
            raise aborted.result()
        attempt.result()  # raises what nats-py raised
    wants_tls = options.get("tls") is not None or any(
        urlsplit(server).scheme in ("tls", "wss") for server in servers
    )
    if wants_tls and _uses_tls(client) is False:
        url = client.connected_url
        await client.close()
        where = f"{url.hostname}:{url.port}" if url else "the server"
        raise NatsRefused(
            f"TLS is configured but {where} did not start TLS; refusing a plaintext connection"
        )
    connecting = False  # from here on, the caller's callbacks hear everything
    return client
