"""`vitals worker` pointed at something that is not a usable Kafka fails fast and says why.

Each case runs the real command as a child process, as an operator would, and checks: a
non-zero exit within the connect timeout (plus the interpreter's start), exactly one line on
stderr naming the broker and the cause, and no traceback.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port, tansu_binary

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 4.0
# Importing Faust and the service takes a few seconds on a loaded machine.
START_SLACK = 25.0


def run_worker(broker_address: str, **env: str) -> tuple[int, list[str], str, float]:
    full_env = {**os.environ, "VITALS_CONFIG": "test.toml",
                "VITALS_APP__BROKER": f'"kafka://{broker_address}"',
                "VITALS_APP__WEB_PORT": str(free_port()),
                "VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT), **env}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT,
                          env=full_env, capture_output=True, timeout=CONNECT_TIMEOUT + 90)
    elapsed = time.monotonic() - t0
    lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    return proc.returncode, lines, proc.stdout.decode(errors="replace"), elapsed


def assert_one_line_failure(result: tuple[int, list[str], str, float], address: str,
                            *causes: str) -> str:
    code, lines, stdout, elapsed = result
    assert code == 1, (code, lines)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "Traceback" not in line and not stdout.strip(), (lines, stdout)
    assert line.startswith("vitals: "), line
    assert address in line, line
    assert any(cause in line for cause in causes), line
    assert elapsed < CONNECT_TIMEOUT + START_SLACK, elapsed
    return line


class FakeListener:
    """A TCP server that is not Kafka: accepts and stays silent, or answers garbage."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)  # kept open: a silent listener never closes
            if self.answer is not None:
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent() -> Iterator[FakeListener]:
    listener = FakeListener(None)
    yield listener
    listener.close()


@pytest.fixture
def garbage() -> Iterator[FakeListener]:
    listener = FakeListener(b"\x7f\xff\xff\xffgarbage, not a Kafka answer\r\n" * 4)
    yield listener
    listener.close()


def test_nothing_listening_fails_within_the_timeout_naming_refused() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_worker(address)
    assert_one_line_failure(result, address, "connection refused")
    # Refused connections are retried until the timeout (a broker may still be starting).
    assert result[3] >= CONNECT_TIMEOUT - 0.5


def test_silent_listener_fails_within_the_timeout(silent: FakeListener) -> None:
    line = assert_one_line_failure(run_worker(silent.address), silent.address,
                                   "no answer to a Kafka request")
    assert "not a Kafka listener, or it needs TLS/SASL" in line
    assert silent.accepted >= 1


def test_garbage_answer_fails_at_once(garbage: FakeListener) -> None:
    result = run_worker(garbage.address)
    line = assert_one_line_failure(result, garbage.address, "not Kafka")
    assert "not a Kafka listener" in line


def test_unresolvable_host_fails_within_the_timeout() -> None:
    address = "no-such-broker.invalid:9092"
    assert_one_line_failure(run_worker(address), address, "cannot resolve the host name")


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tansu requiring SASL authentication (--authentication) on a plaintext listener."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("sasl") / "tansu.log", "wb")
    proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", listener,
                             "--advertised-listener-url", listener,
                             "--storage-engine", "memory://tansu/", "--authentication"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError as err:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("Tansu with --authentication did not start") from err
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_plaintext_client_on_a_sasl_listener_says_it_needs_sasl(sasl_broker: str) -> None:
    line = assert_one_line_failure(run_worker(sasl_broker), sasl_broker, "needs SASL")
    assert "kafka.security_protocol = SASL_PLAINTEXT or SASL_SSL" in line


def test_sasl_client_on_a_plaintext_listener_fails_clearly() -> None:
    with EmbeddedBroker() as broker:
        line = assert_one_line_failure(
            run_worker(broker.address, VITALS_KAFKA__SECURITY_PROTOCOL='"SASL_PLAINTEXT"',
                       VITALS_KAFKA__SASL_USERNAME='"alice"', KAFKA_SASL_PASSWORD="secret"),
            broker.address, "refused the SASL handshake")
    assert "secret" not in line


def test_tls_client_on_a_plaintext_listener_fails_within_the_timeout() -> None:
    with EmbeddedBroker() as broker:
        line = assert_one_line_failure(
            run_worker(broker.address, VITALS_KAFKA__SECURITY_PROTOCOL='"SSL"'),
            broker.address, "no TLS handshake")
    assert "the listener is not TLS" in line


def test_scram_against_a_real_sasl_listener_reaches_authentication(sasl_broker: str) -> None:
    """The SCRAM exchange runs against Tansu's SASL layer. Tansu's memory storage keeps no
    SCRAM credentials, so no user can succeed here: the failure must name authentication."""
    line = assert_one_line_failure(
        run_worker(sasl_broker, VITALS_KAFKA__SECURITY_PROTOCOL='"SASL_PLAINTEXT"',
                   VITALS_KAFKA__SASL_MECHANISM='"SCRAM-SHA-256"',
                   VITALS_KAFKA__SASL_USERNAME='"alice"', KAFKA_SASL_PASSWORD="secret"),
        sasl_broker, "authentication of user 'alice' failed")
    assert "SCRAM-SHA-256" in line and "secret" not in line


def test_mechanism_the_broker_does_not_offer_is_named(sasl_broker: str) -> None:
    line = assert_one_line_failure(
        run_worker(sasl_broker, VITALS_KAFKA__SECURITY_PROTOCOL='"SASL_PLAINTEXT"',
                   VITALS_KAFKA__SASL_MECHANISM='"PLAIN"',
                   VITALS_KAFKA__SASL_USERNAME='"alice"', KAFKA_SASL_PASSWORD="secret"),
        sasl_broker, "mechanism PLAIN")
    assert "kafka.sasl_mechanism" in line


# --- topics: creation off, replication factor ----------------------------------------------

def test_missing_topics_with_creation_off_are_listed() -> None:
    with EmbeddedBroker() as broker:
        code, lines, _, _ = run_worker(broker.address, VITALS_APP__CREATE_TOPICS="false")
    assert code == 1 and len(lines) == 1, lines
    line = lines[0]
    assert "app.create_topics is false and 21 topic(s)" in line and broker.address in line
    for name in ("events.signup missing (partitions: 4)", "vitals.customer missing",
                 "vitals.internal.churn-model missing (partitions: 1)",
                 "vitals-customers-changelog missing", "vitals-churn_learner-changelog missing"):
        assert name in line, line
    assert "vitals topics plan" in line


def test_creation_off_passes_when_the_topics_exist_and_names_a_wrong_count() -> None:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.kafka_config import KafkaStartupError
    from streams.settings import load_settings
    from streams.topics import ensure_topics, topic_specs

    with EmbeddedBroker() as broker:
        settings = load_settings("test.toml", env={})
        asyncio.run(ensure_topics(settings, broker.address))      # created, as by a platform team
        off = load_settings("test.toml", env={"VITALS_APP__CREATE_TOPICS": "false"})
        asyncio.run(ensure_topics(off, broker.address))           # all there: passes

        async def make_wrong() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
            await admin.start()
            await admin.create_topics([NewTopic("other.usage", 2, 1)])
            await admin.close()

        asyncio.run(make_wrong())
        renamed = load_settings("test.toml", env={"VITALS_APP__CREATE_TOPICS": "false",
                                                  "VITALS_TOPICS__USAGE": '"other.usage"'})
        with pytest.raises(KafkaStartupError) as info:
            asyncio.run(ensure_topics(renamed, broker.address))
    assert str(info.value).count("topic(s)") == 1
    assert "1 topic(s)" in str(info.value)
    assert "other.usage has 2 partitions, needs 4" in str(info.value)
    assert len(topic_specs(settings)) == 21


def test_replication_factor_3_on_one_broker_is_a_clear_error() -> None:
    with EmbeddedBroker() as broker:
        code, lines, _, _ = run_worker(broker.address, VITALS_TOPICS__REPLICATION_FACTOR="3")
    assert code == 1 and len(lines) == 1, lines
    assert ("topics.replication_factor = 3 but the cluster at " + broker.address
            + " has 1 broker(s)") in lines[0], lines[0]


def test_worker_runs_with_creation_off_once_the_topics_exist(tmp_path: Path) -> None:
    """Faust's own topic declaration is off too: the worker must still start on topics made
    by someone else (here: the same specs `vitals topics plan` prints)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from streams.settings import load_settings
    from streams.topics import topic_specs
    from tests.integration.conftest import WorkerProcess

    with EmbeddedBroker() as broker:
        specs = topic_specs(load_settings("test.toml", env={"VITALS_APP__ID": '"vitals-off"'}))

        async def create() -> list[str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
            await admin.start()
            try:
                await admin.create_topics(specs)
                return await admin.list_topics()
            finally:
                await admin.close()

        before = set(asyncio.run(create()))
        worker = WorkerProcess(broker.url, tmp_path / "worker.log", VITALS_APP__ID="vitals-off",
                               VITALS_APP__CREATE_TOPICS="false")
        # WorkerProcess renames some internal topics per app id: create those names too.
        renamed = load_settings("test.toml", env={k: v for k, v in worker.env.items()
                                                  if k.startswith("VITALS_") and k != "VITALS_CONFIG"})
        specs = topic_specs(renamed)
        before |= set(asyncio.run(create()))
        worker.start(timeout=90)
        try:
            assert worker.get("/healthz")[0] == 200
        finally:
            code = worker.stop()
        after = asyncio.run(create())
    assert code == 0, worker.log_tail()
    assert set(after) == before, set(after) ^ before   # nothing created by the worker
