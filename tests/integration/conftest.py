"""One embedded broker and one worker for the whole session (Tansu joins groups slowly).

Tests share the worker, so each takes its own customers and its own period of event time
(`period`), later than every earlier test's, so shared partition watermarks only move forward.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from tests.integration.kafka import In, Out

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
PERIOD_START = 1893456000.0  # 2030-01-01T00:00:00Z
_periods = itertools.count()


class WorkerProcess:
    """`vitals worker` as a child process, as an operator would run it."""

    def __init__(self, broker_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "VITALS_CONFIG": "test.toml", "VITALS_APP__BROKER": broker_url,
                    "VITALS_APP__WEB_PORT": str(self.port), **env}
        app_id = env.get("VITALS_APP__ID")
        if app_id:  # internal topics of their own for a worker group of its own
            for key in ("FEATURE_INTERNAL", "FEATURE_CATALOG", "CHURN_EXAMPLES",
                        "CHURN_MODEL", "BUSINESS_INTERNAL"):
                self.env.setdefault(f"VITALS_TOPICS__{key}", f"{app_id}.internal.{key.lower()}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout} s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics")[1].decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b


@pytest.fixture(scope="session")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[WorkerProcess]:
    w = WorkerProcess(broker.url, tmp_path_factory.mktemp("worker") / "worker.log",
                      VITALS_APP__ID="vitals-it")
    w.start()
    yield w
    code = w.stop()
    assert code == 0, f"worker exited {code} on SIGTERM:\n{w.log_tail()}"


@pytest.fixture(scope="session")
def produce(broker: EmbeddedBroker) -> Iterator[In]:
    p = In(broker.address)
    yield p
    p.flush()


@pytest.fixture(scope="session")
def customers_out(broker: EmbeddedBroker, worker: WorkerProcess) -> Iterator[Out]:
    out = Out(broker.address, "vitals.customer")
    yield out
    out.close()


@pytest.fixture(scope="session")
def deadletters_out(broker: EmbeddedBroker, worker: WorkerProcess) -> Iterator[Out]:
    out = Out(broker.address, "vitals.deadletter")
    yield out
    out.close()


@pytest.fixture
def period() -> float:
    """Start of a 400-day stretch of event time that no earlier test used."""
    return PERIOD_START + next(_periods) * 400 * DAY


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
