"""The worker and `vitals replay` log in with SASL/SCRAM (and PLAIN) over TLS, and work.

Tansu 0.6.0 runs the SCRAM exchange (see test_startup_errors_e2e.py) but its memory storage
keeps no SCRAM credentials and it offers no PLAIN, so nobody can log in to it. The SASL server
side here is tests/integration/proxies.py: SaslHandshake and SaslAuthenticate as Kafka frames
them, SCRAM per RFC 5802, in front of a plaintext Tansu that advertises the proxy's port. The
clients are the service's own (aiokafka and Faust with the credentials from [kafka]), so each of
them must complete a real SCRAM login, over TLS, before it reaches the broker.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.kafka_config import KafkaStartupError
from streams.settings import load_settings
from streams.topics import ensure_topics
from tests.integration.conftest import ROOT, WorkerProcess, iso
from tests.integration.proxies import BrokerProxy, make_certs, server_tls
from tests.integration.test_kafka_tls_e2e import _committed, _read_customers

APP_ID = "vitals-sasl"
USER, PASSWORD = "svc-vitals", "s3cret-Pa55"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def sasl_broker(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[BrokerProxy]:
    """SASL_SSL (server certificate only) with one user, in front of a plaintext broker."""
    proxy_port = free_port()
    log = tmp_path_factory.mktemp("sasl-broker") / "tansu.log"
    with EmbeddedBroker(log_path=log, advertised_port=proxy_port) as broker:
        proxy = BrokerProxy(proxy_port, broker.port,
                            tls=server_tls(certs, require_client_cert=False),
                            sasl_users={USER: PASSWORD})
        yield proxy
        proxy.close()


def sasl_env(certs: dict[str, str], mechanism: str, **extra: str) -> dict[str, str]:
    return {"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_SSL"',
            "VITALS_KAFKA__SASL_MECHANISM": f'"{mechanism}"',
            "VITALS_KAFKA__SASL_USERNAME": f'"{USER}"',
            "VITALS_KAFKA__SSL_CAFILE": f'"{certs["ca.pem"]}"',
            "VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": "5", **extra}


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120
            ) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if k != "KAFKA_SASL_PASSWORD"}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env={**clean, "VITALS_CONFIG": "test.toml", **env},
                          capture_output=True, timeout=timeout)


def test_worker_logs_in_with_scram_consumes_produces_and_commits(
        sasl_broker: BrokerProxy, certs: dict[str, str], tmp_path: Path) -> None:
    url = f"kafka://127.0.0.1:{sasl_broker.port}"
    password_file = tmp_path / "kafka-password"
    password_file.write_text(PASSWORD + "\n")
    # The worker: SCRAM-SHA-512, password from a file.
    worker_env = sasl_env(certs, "SCRAM-SHA-512",
                          VITALS_KAFKA__SASL_PASSWORD_FILE=f'"{password_file}"')
    worker = WorkerProcess(url, tmp_path / "worker.log", VITALS_APP__ID=APP_ID, **worker_env)
    worker.env.pop("KAFKA_SASL_PASSWORD", None)
    refused_before = sasl_broker.refused_unauthenticated
    worker.start(timeout=120)
    try:
        logins_before_replay = dict(sasl_broker.authenticated)
        assert logins_before_replay.get("SCRAM-SHA-512", 0) >= 5, logins_before_replay
        # replay: SCRAM-SHA-256, password from the environment.
        replay_env = sasl_env(certs, "SCRAM-SHA-256", KAFKA_SASL_PASSWORD=PASSWORD)
        t0 = time.time() - 86400
        customers = [f"sasl-{i}" for i in range(4)]
        events = [{"family": "signup", "event_id": f"s-{c}", "customer_id": c, "ts": iso(t0),
                   "segment": "smb"} for c in customers]
        events += [{"family": "usage", "event_id": f"u-{c}-{j}", "customer_id": c,
                    "user_id": f"{c}-u", "ts": iso(t0 + 60 * (j + 1)), "action": "login"}
                   for c in customers for j in range(3)]
        jsonl = tmp_path / "events.jsonl"
        jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        replay = run_cli(["replay", str(jsonl), "--broker", url], replay_env)
        assert replay.returncode == 0, replay.stderr.decode()
        assert sasl_broker.authenticated.get("SCRAM-SHA-256", 0) >= 1

        os.environ["KAFKA_SASL_PASSWORD"] = PASSWORD  # for the test's own clients
        try:
            settings = load_settings("test.toml", env=replay_env)
            seen = asyncio.run(_read_customers(sasl_broker.port, settings, set(customers)))
            assert seen == set(customers)
            inputs = list(settings.topics.input_topics())
            committed = _committed(sasl_broker.port, settings, f"{APP_ID}-ingest", inputs,
                                   len(events))
            assert sum(committed.values()) == len(events), committed
            faust_committed = _committed(sasl_broker.port, settings, APP_ID,
                                         [settings.topics.repartition], 1)
            assert sum(faust_committed.values()) >= 1, faust_committed
        finally:
            os.environ.pop("KAFKA_SASL_PASSWORD", None)
        assert worker.get("/healthz")[0] == 200
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    # No client of the worker or of replay sent a request without logging in first (the
    # proxy would have counted and closed it), and no login failed.
    assert sasl_broker.refused_unauthenticated == refused_before == 0
    assert sasl_broker.failed_logins == 0


def test_wrong_password_fails_the_start_in_one_line(sasl_broker: BrokerProxy,
                                                    certs: dict[str, str]) -> None:
    address = f"127.0.0.1:{sasl_broker.port}"
    failed_before = sasl_broker.failed_logins
    proc = run_cli(["worker"], {**sasl_env(certs, "SCRAM-SHA-512",
                                           KAFKA_SASL_PASSWORD="not-the-password"),
                                "VITALS_APP__BROKER": f'"kafka://{address}"',
                                "VITALS_APP__WEB_PORT": str(free_port())})
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, lines
    line = lines[0]
    assert address in line and "Traceback" not in line
    assert f"SASL SCRAM-SHA-512 authentication of user '{USER}' failed" in line, line
    assert "not-the-password" not in line
    assert sasl_broker.failed_logins > failed_before


def test_plain_mechanism_and_plaintext_client(sasl_broker: BrokerProxy,
                                              certs: dict[str, str]) -> None:
    address = f"127.0.0.1:{sasl_broker.port}"
    env = sasl_env(certs, "PLAIN", KAFKA_SASL_PASSWORD=PASSWORD)
    os.environ["KAFKA_SASL_PASSWORD"] = PASSWORD
    try:
        before = sasl_broker.authenticated.get("PLAIN", 0)
        asyncio.run(ensure_topics(load_settings("test.toml", env=env), address))
        assert sasl_broker.authenticated.get("PLAIN", 0) > before
    finally:
        os.environ.pop("KAFKA_SASL_PASSWORD", None)
    # TLS without SASL on this listener: refused before authentication, named.
    tls_only = load_settings("test.toml", env={
        "VITALS_KAFKA__SECURITY_PROTOCOL": '"SSL"',
        "VITALS_KAFKA__SSL_CAFILE": f'"{certs["ca.pem"]}"',
        "VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": "5"})
    with pytest.raises(KafkaStartupError, match="needs SASL"):
        asyncio.run(ensure_topics(tls_only, address))
