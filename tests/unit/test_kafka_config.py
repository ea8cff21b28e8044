"""The [kafka] settings: validation, the kwargs of each client library, and that every client
of the service is built with them (constructors recorded; the real connections are in
tests/integration/test_kafka_tls_e2e.py and test_startup_errors_e2e.py)."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.kafka_config import (
    KafkaStartupError,
    aiokafka_kwargs,
    faust_kwargs,
    librdkafka_config,
    split_hosts,
)
from streams.settings import SettingsError, load_settings

SASL_ENV = {"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_SSL"',
            "VITALS_KAFKA__SASL_MECHANISM": '"SCRAM-SHA-256"',
            "VITALS_KAFKA__SASL_USERNAME": '"svc-vitals"',
            "KAFKA_SASL_PASSWORD": "pa55-w0rd"}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=unit-ca"],
                   cwd=d, check=True, capture_output=True)
    return str(d / "ca.pem")


def sasl_settings(ca_file: str, **extra: str) -> Any:
    return load_settings(env={**SASL_ENV, "VITALS_KAFKA__SSL_CAFILE": f'"{ca_file}"', **extra})


def test_defaults_are_plaintext_and_add_nothing() -> None:
    k = load_settings(env={}).kafka
    assert aiokafka_kwargs(k, env={}) == {"security_protocol": "PLAINTEXT"}
    assert faust_kwargs(k, env={}) == {}
    assert librdkafka_config(k, env={}) == {"security.protocol": "plaintext"}
    assert k.connect_timeout_seconds == 15.0


def test_sasl_ssl_kwargs_for_aiokafka(ca_file: str) -> None:
    k = sasl_settings(ca_file).kafka
    kw = aiokafka_kwargs(k, env=SASL_ENV)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kw["sasl_plain_username"] == "svc-vitals"
    assert kw["sasl_plain_password"] == "pa55-w0rd"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert any(c["subject"] == ((("commonName", "unit-ca"),),) for c in ctx.get_ca_certs())


def test_faust_credentials_become_the_same_aiokafka_kwargs(ca_file: str) -> None:
    """Faust turns broker_credentials into aiokafka kwargs itself: they must match ours."""
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    k = sasl_settings(ca_file).kafka
    creds = faust_kwargs(k, env=SASL_ENV)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    theirs = dict(credentials_to_aiokafka_auth(creds))
    ours = aiokafka_kwargs(k, env=SASL_ENV)
    assert isinstance(theirs.pop("ssl_context"), ssl.SSLContext)
    ours.pop("ssl_context")
    assert theirs == ours


def test_ssl_only_gives_faust_ssl_credentials(ca_file: str) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    k = load_settings(env={"VITALS_KAFKA__SECURITY_PROTOCOL": '"SSL"',
                           "VITALS_KAFKA__SSL_CAFILE": f'"{ca_file}"',
                           "VITALS_KAFKA__SSL_CHECK_HOSTNAME": "false"}).kafka
    creds = faust_kwargs(k, env={})["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].check_hostname is False
    assert "sasl_mechanism" not in aiokafka_kwargs(k, env={})


def test_sasl_plaintext_faust_protocol() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    env = {**SASL_ENV, "VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_PLAINTEXT"'}
    k = load_settings(env=env).kafka
    auth = credentials_to_aiokafka_auth(faust_kwargs(k, env=env)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert "ssl_context" not in aiokafka_kwargs(k, env=env)


def test_password_file_wins_and_loses_its_newline(tmp_path: Path, ca_file: str) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    k = sasl_settings(ca_file, VITALS_KAFKA__SASL_PASSWORD_FILE=f'"{secret}"').kafka
    assert aiokafka_kwargs(k, env=SASL_ENV)["sasl_plain_password"] == "from-file"
    assert librdkafka_config(k, env=SASL_ENV)["sasl.password"] == "from-file"


def test_librdkafka_config(ca_file: str) -> None:
    conf = librdkafka_config(sasl_settings(ca_file).kafka, env=SASL_ENV)
    assert conf == {"security.protocol": "sasl_ssl", "ssl.ca.location": ca_file,
                    "ssl.endpoint.identification.algorithm": "https",
                    "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "svc-vitals",
                    "sasl.password": "pa55-w0rd"}


def test_password_missing_at_client_start_is_a_startup_error(ca_file: str) -> None:
    k = sasl_settings(ca_file).kafka
    with pytest.raises(KafkaStartupError, match="KAFKA_SASL_PASSWORD"):
        aiokafka_kwargs(k, env={})


@pytest.mark.parametrize("env, match", [
    ({"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_SSL"', "KAFKA_SASL_PASSWORD": "x"},
     "kafka.sasl_username"),
    ({"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_PLAINTEXT"',
      "VITALS_KAFKA__SASL_USERNAME": '"u"'}, "KAFKA_SASL_PASSWORD"),
    ({"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_PLAINTEXT"', "VITALS_KAFKA__SASL_USERNAME": '"u"',
      "VITALS_KAFKA__SASL_PASSWORD_FILE": '"/nonexistent/pw"'}, "sasl_password_file"),
    ({"VITALS_KAFKA__SECURITY_PROTOCOL": '"TLS"'}, "kafka.security_protocol"),
    ({"VITALS_KAFKA__SASL_MECHANISM": '"GSSAPI"'}, "kafka.sasl_mechanism"),
    ({"VITALS_KAFKA__SECURITY_PROTOCOL": '"SSL"', "VITALS_KAFKA__SSL_CAFILE": '"/nope.pem"'},
     "kafka.ssl_cafile"),
    ({"VITALS_KAFKA__SSL_CAFILE": '"/etc/hostname"'}, "security_protocol"),
    ({"VITALS_KAFKA__CONNECT_TIMEOUT_SECONDS": "0"}, "kafka.connect_timeout_seconds"),
    ({"VITALS_TOPICS__REPLICATION_FACTOR": "0"}, "topics.replication_factor"),
])
def test_bad_kafka_settings_fail_naming_the_key(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(env=env)


def test_client_certificate_needs_its_key(ca_file: str) -> None:
    with pytest.raises(SettingsError, match="go together"):
        load_settings(env={"VITALS_KAFKA__SECURITY_PROTOCOL": '"SSL"',
                           "VITALS_KAFKA__SSL_CERTFILE": f'"{ca_file}"'})


def test_config_check_never_prints_the_password(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    from streams.cli import main

    secret = tmp_path / "pw"
    secret.write_text("file-secret-123")
    for key, value in SASL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VITALS_KAFKA__SECURITY_PROTOCOL", '"SASL_PLAINTEXT"')
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "svc-vitals" in out and "KAFKA_SASL_PASSWORD" in out
    assert "pa55-w0rd" not in out
    monkeypatch.setenv("VITALS_KAFKA__SASL_PASSWORD_FILE", f'"{secret}"')
    assert main(["config", "check"]) == 0
    assert "file-secret-123" not in capsys.readouterr().out


def test_split_hosts() -> None:
    assert split_hosts("a:9092, b:9093,[::1]:9094,c") == [
        ("a", 9092), ("b", 9093), ("::1", 9094), ("c", 9092)]


# --- every client is built with the settings ----------------------------------------------

class Recorder:
    """Stands in for an aiokafka client class: records the constructor kwargs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        recorder = self

        class Client:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                recorder.calls.append(kwargs)

            async def start(self) -> None:
                pass

            async def stop(self) -> None:
                pass

            async def flush(self) -> None:
                pass

            async def send(self, *args: Any, **kwargs: Any) -> None:
                pass

            def assign(self, tps: Any) -> None:
                pass

            def subscribe(self, topics: Any, listener: Any = None) -> None:
                pass

            async def seek_to_beginning(self, *tps: Any) -> None:
                pass

        self.cls = Client


def assert_secured(kwargs: dict[str, Any]) -> None:
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_username"] == "svc-vitals"
    assert kwargs["sasl_plain_password"] == "pa55-w0rd"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch, ca_file: str) -> Any:
    for key, value in SASL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VITALS_KAFKA__SSL_CAFILE", f'"{ca_file}"')
    return load_settings()


def test_ingest_consumer_and_producer(monkeypatch: pytest.MonkeyPatch, secured: Any) -> None:
    import streams.ingest as ingest
    from streams.exporters.metrics import Metrics
    from streams.topics import Partitioner

    consumers, producers = Recorder(), Recorder()
    monkeypatch.setattr(ingest, "AIOKafkaConsumer", consumers.cls)
    monkeypatch.setattr(ingest, "AIOKafkaProducer", producers.cls)
    service = ingest.IngestService(secured, "b:9093", Metrics(), Partitioner(4))
    asyncio.run(service.on_start())
    assert len(consumers.calls) == 1 and len(producers.calls) == 1
    assert_secured(consumers.calls[0])
    assert_secured(producers.calls[0])
    assert consumers.calls[0]["bootstrap_servers"] == "b:9093"


def test_follower(monkeypatch: pytest.MonkeyPatch, secured: Any) -> None:
    import streams.follow as follow

    consumers = Recorder()
    monkeypatch.setattr(follow, "AIOKafkaConsumer", consumers.cls)
    follower = follow.Follower("b:9093", aiokafka_kwargs(secured.kafka))
    monkeypatch.setattr(follower, "add_future", lambda coro: coro.close())
    asyncio.run(follower.on_start())
    assert_secured(consumers.calls[0])


def test_produce_for_replay_and_simulate(monkeypatch: pytest.MonkeyPatch, secured: Any) -> None:
    import streams.produce as produce

    producers = Recorder()
    monkeypatch.setattr(produce, "AIOKafkaProducer", producers.cls)
    sent = asyncio.run(produce.produce("b:9093", {"usage": "events.usage"},
                                       [("usage", b"x")],
                                       client_kwargs=aiokafka_kwargs(secured.kafka)))
    assert sent == 1
    assert_secured(producers.calls[0])


def test_admin_client_of_ensure_topics(monkeypatch: pytest.MonkeyPatch, secured: Any) -> None:
    import streams.topics as topics

    admins = Recorder()

    class Admin(admins.cls):
        async def close(self) -> None:
            pass

        async def list_topics(self) -> list[str]:
            return [s.name for s in topics.topic_specs(secured)]

        async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            specs = {s.name: s for s in topics.topic_specs(secured)}
            return [{"topic": n, "error_code": 0,
                     "partitions": list(range(specs[n].num_partitions))} for n in names]

    probed: list[Any] = []

    async def probe(bootstrap: str, k: Any) -> None:
        probed.append((bootstrap, k))

    monkeypatch.setattr(topics, "AIOKafkaAdminClient", Admin)
    monkeypatch.setattr(topics, "probe", probe)
    asyncio.run(topics.ensure_topics(secured, "b:9093"))
    assert probed == [("b:9093", secured.kafka)]
    assert_secured(admins.calls[0])


def test_faust_app_and_follower_of_build_app(monkeypatch: pytest.MonkeyPatch,
                                             secured: Any) -> None:
    import faust

    import streams.app as app_module

    followers: list[Any] = []
    real = app_module.Follower

    class RecordingFollower(real):
        def __init__(self, bootstrap: str, client_kwargs: Any = None) -> None:
            super().__init__(bootstrap, client_kwargs)
            followers.append(self)

    monkeypatch.setattr(app_module, "Follower", RecordingFollower)
    settings = load_settings(env={**dict(__import__("os").environ),
                                  "VITALS_TOPICS__REPLICATION_FACTOR": "3"})
    service = app_module.build_app(settings, "kafka://b:9093")
    conf = service.app.conf
    assert isinstance(conf.broker_credentials, faust.SASLCredentials)
    assert conf.broker_credentials.username == "svc-vitals"
    assert conf.broker_credentials.password == "pa55-w0rd"
    assert conf.topic_replication_factor == 3
    assert conf.topic_allow_declare is True
    assert_secured(followers[0].client_kwargs)


def test_replay_and_simulate_commands_pass_the_settings(monkeypatch: pytest.MonkeyPatch,
                                                        secured: Any, tmp_path: Path) -> None:
    import streams.produce as produce
    import streams.topics as topics
    from streams.cli import main

    calls: list[dict[str, Any]] = []

    async def fake_produce(bootstrap: str, topic_of: Any, items: Any, **kw: Any) -> int:
        calls.append(kw)
        return sum(1 for _ in items)

    async def fake_ensure(settings: Any, bootstrap: str) -> None:
        assert settings.kafka.security_protocol == "SASL_SSL"

    monkeypatch.setattr(produce, "produce", fake_produce)
    monkeypatch.setattr(topics, "ensure_topics", fake_ensure)
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"family": "usage", "customer_id": "c", "ts": 1}\n')
    assert main(["replay", str(jsonl), "--broker", "kafka://b:9093"]) == 0
    assert main(["simulate", "--customers", "2", "--days", "2",
                 "--broker", "kafka://b:9093"]) == 0
    assert len(calls) == 2
    for kw in calls:
        assert_secured(kw["client_kwargs"])


# --- the start-up probe against local listeners that are not Kafka ------------------------

def _probe_against(answer: bytes | None, env: dict[str, str] | None = None,
                   timeout: float = 1.0) -> tuple[str, float]:
    """Run the probe against a local server that answers `answer` (None: stays silent)."""
    import time

    from streams.kafka_config import probe

    async def run() -> tuple[str, float]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
                writer.close()
            else:
                await asyncio.sleep(30)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        k = load_settings(env=env or {}).kafka
        t0 = time.monotonic()
        try:
            with pytest.raises(KafkaStartupError) as info:
                await probe(f"127.0.0.1:{port}", k, timeout=timeout)
        finally:
            server.close()
        assert f"127.0.0.1:{port}" in str(info.value)
        return str(info.value), time.monotonic() - t0

    return asyncio.run(run())


def test_probe_names_a_tls_alert() -> None:
    message, elapsed = _probe_against(b"\x15\x03\x03\x00\x02\x02\x32")
    assert "TLS alert: the listener needs TLS" in message and elapsed < 1.0


def test_probe_names_http_and_garbage() -> None:
    assert "answered HTTP" in _probe_against(b"HTTP/1.1 400 Bad Request\r\n\r\n")[0]
    assert "not Kafka" in _probe_against(b"\xff\xff\xff\xff....")[0]


def test_probe_gives_up_on_a_silent_listener_at_the_timeout() -> None:
    message, elapsed = _probe_against(None, timeout=1.0)
    assert "no answer to a Kafka request within 1 s" in message
    assert 0.9 <= elapsed < 3.0
    assert "\n" not in message


def test_probe_parses_a_refused_sasl_mechanism() -> None:
    """A Kafka-shaped ApiVersions answer, then a SaslHandshake answer offering other
    mechanisms: the line names what is offered."""
    import struct

    async def run() -> str:
        from streams.kafka_config import probe

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(2):
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                api_key, _, correlation = struct.unpack(">hhi", frame[:8])
                if api_key == 18:
                    body = struct.pack(">hi", 0, 0)
                else:
                    body = struct.pack(">hi", 33, 1) + struct.pack(">h", 13) + b"SCRAM-SHA-512"
                payload = struct.pack(">i", correlation) + body
                writer.write(struct.pack(">i", len(payload)) + payload)
                await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env = {"VITALS_KAFKA__SECURITY_PROTOCOL": '"SASL_PLAINTEXT"',
               "VITALS_KAFKA__SASL_MECHANISM": '"PLAIN"',
               "VITALS_KAFKA__SASL_USERNAME": '"u"', "KAFKA_SASL_PASSWORD": "p"}
        try:
            with pytest.raises(KafkaStartupError) as info:
                await probe(f"127.0.0.1:{port}", load_settings(env=env).kafka, timeout=2)
        finally:
            server.close()
        return str(info.value)

    message = asyncio.run(run())
    assert "does not offer SASL mechanism PLAIN (offers SCRAM-SHA-512)" in message


def test_probe_tries_every_bootstrap_broker_and_names_each() -> None:
    """One broker refuses, one answers garbage: both are named, in one line, and the start
    fails at the timeout (the refused one might still come up)."""
    from streams.broker import free_port
    from streams.kafka_config import probe

    async def run() -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"\x7f\x00\x00\x00 nope")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        refused = free_port()
        try:
            with pytest.raises(KafkaStartupError) as info:
                await probe(f"127.0.0.1:{refused},127.0.0.1:{port}", load_settings(env={}).kafka,
                            timeout=1.0)
        finally:
            server.close()
        message = str(info.value)
        assert f"127.0.0.1:{refused}: connection refused" in message
        assert f"127.0.0.1:{port}: answered bytes that are not Kafka" in message
        return message

    assert "\n" not in asyncio.run(run())
