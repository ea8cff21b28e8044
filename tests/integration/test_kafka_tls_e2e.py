"""The worker, `vitals replay` and the admin client over TLS with client certificates (mTLS).

Tansu 0.6.0 (the bundled broker) cannot serve TLS from its command line: `--cert` and `--key`
belong to one exclusive argument group, so giving both is refused and either alone leaves TLS
off. TLS is therefore terminated by a proxy in front of a plaintext Tansu
(tests/integration/proxies.py), as a TLS load balancer would do; Tansu advertises the proxy's
port, so every client (bootstrap and the connections that metadata sends it to) speaks TLS,
verified against a CA made for the test, and presents a client certificate the proxy requires.
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
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker import EmbeddedBroker, free_port
from streams.kafka_config import KafkaStartupError, aiokafka_kwargs, librdkafka_config, probe
from streams.settings import load_settings
from tests.integration.conftest import ROOT, WorkerProcess, iso
from tests.integration.proxies import BrokerProxy, make_certs, server_tls

APP_ID = "vitals-tls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_broker(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[BrokerProxy]:
    """TLS with a required client certificate, in front of a plaintext embedded broker."""
    proxy_port = free_port()
    log = tmp_path_factory.mktemp("tls-broker") / "tansu.log"
    with EmbeddedBroker(log_path=log, advertised_port=proxy_port) as broker:
        proxy = BrokerProxy(proxy_port, broker.port, tls=server_tls(certs))
        yield proxy
        proxy.close()


def tls_env(certs: dict[str, str], client_cert: bool = True) -> dict[str, str]:
    env = {"VITALS_KAFKA__SECURITY_PROTOCOL": '"SSL"',
           "VITALS_KAFKA__SSL_CAFILE": f'"{certs["ca.pem"]}"',
           "VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": "5"}
    if client_cert:
        env["VITALS_KAFKA__SSL_CERTFILE"] = f'"{certs["client.pem"]}"'
        env["VITALS_KAFKA__SSL_KEYFILE"] = f'"{certs["client.key"]}"'
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env={**os.environ, "VITALS_CONFIG": "test.toml", **env},
                          capture_output=True, timeout=timeout)


def test_worker_consumes_produces_and_commits_over_tls(
        tls_broker: BrokerProxy, certs: dict[str, str], tmp_path: Path) -> None:
    url = f"kafka://127.0.0.1:{tls_broker.port}"
    env = tls_env(certs)
    worker = WorkerProcess(url, tmp_path / "worker.log", VITALS_APP__ID=APP_ID, **env)
    worker.start(timeout=120)
    try:
        # Input through `vitals replay` over TLS: the CLI producer takes the same settings.
        t0 = time.time() - 86400
        customers = [f"tls-{i}" for i in range(4)]
        events = [{"family": "signup", "event_id": f"s-{c}", "customer_id": c, "ts": iso(t0),
                   "segment": "smb"} for c in customers]
        events += [{"family": "usage", "event_id": f"u-{c}-{j}", "customer_id": c,
                    "user_id": f"{c}-u", "ts": iso(t0 + 60 * (j + 1)), "action": "login"}
                   for c in customers for j in range(3)]
        jsonl = tmp_path / "events.jsonl"
        jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        replay = run_cli(["replay", str(jsonl), "--broker", url], env)
        assert replay.returncode == 0, replay.stderr.decode()

        settings = load_settings("test.toml", env={**env, "VITALS_APP__ID": f'"{APP_ID}"'})
        seen = asyncio.run(_read_customers(tls_broker.port, settings, set(customers)))
        assert seen == set(customers)
        inputs = list(settings.topics.input_topics())
        committed = _committed(tls_broker.port, settings, f"{APP_ID}-ingest", inputs,
                               len(events))
        assert sum(committed.values()) == len(events), committed
        # Faust's group committed what it consumed of the internal topic.
        faust_committed = _committed(tls_broker.port, settings, APP_ID,
                                     [settings.topics.repartition], 1)
        assert sum(faust_committed.values()) >= 1, faust_committed
        assert worker.get("/healthz")[0] == 200
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    # Every client went through the TLS proxy with a verified client certificate: ingest
    # consumer and producer, followers, admin, Faust's consumer and producer, replay.
    assert tls_broker.tls_sessions >= 6


async def _read_customers(port: int, settings, wanted: set[str],
                          timeout: float = 90.0) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", group_id=None,
                                enable_auto_commit=False, **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    seen: set[str] = set()
    try:
        topic = settings.topics.customer
        tps = [TopicPartition(topic, p) for p in range(settings.app.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and seen != wanted:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                seen.update(r.key.decode() for r in records if r.key and r.key.decode() in wanted)
    finally:
        await consumer.stop()
    return seen


def _committed(port: int, settings, group: str, topics: list[str], at_least: int,
               timeout: float = 60.0) -> dict[str, int]:
    """Committed offsets of a group over TLS (librdkafka, with the same settings), waited for
    until they sum to `at_least`."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as CTP

    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": group,
                         "enable.auto.commit": False, **librdkafka_config(settings.kafka)})
    try:
        tps = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10)
            tps += [CTP(topic, p) for p in meta.topics[topic].partitions]
        deadline = time.monotonic() + timeout
        best: dict[str, int] = {}
        while time.monotonic() < deadline:
            best = {f"{tp.topic}[{tp.partition}]": tp.offset
                    for tp in consumer.committed(tps, timeout=10) if tp.offset > 0}
            if sum(best.values()) >= at_least:
                break
            time.sleep(0.5)
        return best
    finally:
        consumer.close()


def test_plaintext_worker_on_the_tls_port_fails_in_one_line(tls_broker: BrokerProxy) -> None:
    address = f"127.0.0.1:{tls_broker.port}"
    proc = run_cli(["worker"], {"VITALS_APP__BROKER": f'"kafka://{address}"',
                                "VITALS_APP__WEB_PORT": str(free_port()),
                                "VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": "4"})
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, lines
    assert address in lines[0] and "Traceback" not in lines[0]
    assert "not a Kafka listener, or it needs TLS/SASL" in lines[0], lines[0]


def test_untrusted_certificate_is_named(tls_broker: BrokerProxy, certs: dict[str, str]) -> None:
    env = tls_env(certs)
    del env["VITALS_KAFKA__SSL_CAFILE"]  # the system's CAs do not know the test CA
    settings = load_settings("test.toml", env=env)
    with pytest.raises(KafkaStartupError, match="TLS certificate not accepted"):
        asyncio.run(probe(f"127.0.0.1:{tls_broker.port}", settings.kafka, timeout=5))


def test_missing_client_certificate_fails(tls_broker: BrokerProxy, certs: dict[str, str]) -> None:
    settings = load_settings("test.toml", env=tls_env(certs, client_cert=False))
    with pytest.raises(KafkaStartupError, match="certificate") as info:
        asyncio.run(probe(f"127.0.0.1:{tls_broker.port}", settings.kafka, timeout=5))
    assert "\n" not in str(info.value)
