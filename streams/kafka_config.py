"""The `[kafka]` settings turned into what each client library takes, and a start-up probe.

One place builds the TLS context and the SASL credentials, so that the ingest consumer and
producer, the followers, the admin client, the Faust app and the `replay`/`simulate` producers
all connect the same way. The TLS context comes from aiokafka's `create_ssl_context` and the
Faust credentials are Faust's own classes, not hand-made equivalents.

The probe runs before any client starts: it connects, speaks just enough of the Kafka protocol
(ApiVersions, and the SASL handshake or a Metadata request) to tell a refused port, a silent
or foreign listener, a TLS listener and a SASL listener apart, and turns each into one line.
"""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import time
from collections.abc import Mapping
from typing import Any

from streams.settings import KafkaSettings


class KafkaStartupError(RuntimeError):
    """The broker cannot be used; the message is one line naming the broker and the cause."""


def sasl_password(k: KafkaSettings, env: Mapping[str, str] | None = None) -> str:
    """The SASL password, from `sasl_password_file` or else the variable `sasl_password_env`.

    Read at each client start, so a rotated secret file is picked up by the next connection.
    """
    if k.sasl_password_file:
        with open(k.sasl_password_file, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    env = os.environ if env is None else env
    password = env.get(k.sasl_password_env, "")
    if not password:
        raise KafkaStartupError(f"SASL needs a password: environment variable "
                                f"{k.sasl_password_env or '(none)'} is empty and "
                                f"kafka.sasl_password_file is not set")
    return password


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    """The client TLS context (CA, client certificate), or None without TLS."""
    if not k.uses_tls:
        return None
    from aiokafka.helpers import create_ssl_context

    ctx = create_ssl_context(cafile=k.ssl_cafile or None, certfile=k.ssl_certfile or None,
                             keyfile=k.ssl_keyfile or None)
    if not k.ssl_check_hostname:
        ctx.check_hostname = False
    return ctx


def aiokafka_kwargs(k: KafkaSettings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient."""
    kwargs: dict[str, Any] = {"security_protocol": k.security_protocol}
    ctx = ssl_context(k)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if k.uses_sasl:
        kwargs.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                      sasl_plain_password=sasl_password(k, env))
    return kwargs


def faust_kwargs(k: KafkaSettings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for faust.App: `broker_credentials` (Faust passes them to every
    consumer, producer and topic-creating client it runs)."""
    import faust

    ctx = ssl_context(k)
    if k.uses_sasl:
        return {"broker_credentials": faust.SASLCredentials(
            username=k.sasl_username, password=sasl_password(k, env), ssl_context=ctx,
            mechanism=k.sasl_mechanism)}
    if ctx is not None:
        return {"broker_credentials": faust.SSLCredentials(ctx)}
    return {}


def librdkafka_config(k: KafkaSettings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The same settings for confluent-kafka (librdkafka) clients, e.g. in tools and tests."""
    conf: dict[str, Any] = {"security.protocol": k.security_protocol.lower()}
    if k.uses_tls:
        if k.ssl_cafile:
            conf["ssl.ca.location"] = k.ssl_cafile
        if k.ssl_certfile:
            conf["ssl.certificate.location"] = k.ssl_certfile
            conf["ssl.key.location"] = k.ssl_keyfile
        conf["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_check_hostname else "none"
    if k.uses_sasl:
        conf.update({"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_username,
                     "sasl.password": sasl_password(k, env)})
    return conf


# --- the start-up probe ------------------------------------------------------------------

_API_VERSIONS, _METADATA, _SASL_HANDSHAKE = 18, 3, 17
_SASL_ERRORS = {33: "UNSUPPORTED_SASL_MECHANISM", 34: "ILLEGAL_SASL_STATE",
                35: "UNSUPPORTED_VERSION"}


class _Transient(Exception):
    """Worth another try until the connect timeout: the broker may still be starting."""


class _Final(Exception):
    """Retrying will not help: the listener is there but is not what the settings expect."""


def split_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """'a:9092,[::1]:9093' -> [('a', 9092), ('::1', 9093)]; a missing port means 9092."""
    out = []
    for part in bootstrap.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            host, port = part, "9092"
        out.append((host.strip("[]"), int(port)))
    return out


def _request(api_key: int, version: int, correlation_id: int, body: bytes = b"") -> bytes:
    client = b"vitals-probe"
    payload = struct.pack(">hhih", api_key, version, correlation_id, len(client)) + client + body
    return struct.pack(">i", len(payload)) + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                    correlation_id: int, timeout: float, hint: str) -> bytes:
    """Send one request and read its answer; anything else is a _Final naming the cause."""
    writer.write(request)
    try:
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
    except TimeoutError:
        raise _Final(f"no answer to a Kafka request within {timeout:.0f} s: {hint}") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial[:1] == b"\x15":
            raise _Final("answered with a TLS alert: the listener needs TLS "
                         "(set kafka.security_protocol = SSL or SASL_SSL)") from None
        raise _Final(f"closed the connection on a Kafka request: {hint}") from None
    except (ConnectionError, OSError) as exc:
        raise _Final(f"dropped the connection on a Kafka request ({exc}): {hint}") from None
    if head[:2] == b"\x15\x03":
        raise _Final("answered with a TLS alert: the listener needs TLS "
                     "(set kafka.security_protocol = SSL or SASL_SSL)")
    if head[:2] == b"HT":
        raise _Final("answered HTTP: this is a web port, not a Kafka listener")
    (size,) = struct.unpack(">i", head)
    if not 4 <= size <= 64 << 20:
        raise _Final(f"answered bytes that are not Kafka ({head!r}): {hint}")
    try:
        body = await asyncio.wait_for(reader.readexactly(size), timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
        raise _Final(f"answered bytes that are not Kafka: {hint}") from None
    if struct.unpack(">i", body[:4])[0] != correlation_id:
        raise _Final(f"answered bytes that are not Kafka: {hint}")
    return body[4:]


def _parse_sasl_handshake(body: bytes) -> tuple[int, list[str]]:
    (error,) = struct.unpack(">h", body[:2])
    (count,) = struct.unpack(">i", body[2:6])
    pos, mechanisms = 6, []
    for _ in range(max(0, count)):
        (n,) = struct.unpack(">h", body[pos:pos + 2])
        mechanisms.append(body[pos + 2:pos + 2 + n].decode(errors="replace"))
        pos += 2 + n
    return error, mechanisms


async def _probe_one(host: str, port: int, k: KafkaSettings, timeout: float) -> None:
    if not k.uses_tls:
        plain_hint = "not a Kafka listener, or it needs TLS/SASL (kafka.security_protocol)"
    elif not k.ssl_certfile:
        plain_hint = ("the TLS listener may require a client certificate (kafka.ssl_certfile), "
                      "or is not Kafka")
    else:
        plain_hint = "the TLS listener refused this client certificate, or is not Kafka"

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        raise _Transient(f"timed out connecting after {timeout:.0f} s (wrong address, or a "
                         f"firewall drops the packets)") from None
    except ConnectionRefusedError:
        raise _Transient("connection refused (nothing listens on that port)") from None
    except socket.gaierror as exc:
        raise _Transient(f"cannot resolve the host name ({exc.strerror})") from None
    except OSError as exc:
        raise _Transient(f"cannot connect ({exc.strerror or exc})") from None
    try:
        ctx = ssl_context(k)
        if ctx is not None:
            try:
                await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
            except TimeoutError:
                raise _Final(f"no TLS handshake within {timeout:.0f} s: the listener is not TLS "
                             f"(set kafka.security_protocol = PLAINTEXT or SASL_PLAINTEXT) or "
                             f"not Kafka") from None
            except ssl.SSLCertVerificationError as exc:
                raise _Final(f"TLS certificate not accepted ({exc.verify_message}): check "
                             f"kafka.ssl_cafile and kafka.ssl_check_hostname") from None
            except (ssl.SSLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc.__class__.__name__
                raise _Final(f"TLS handshake failed ({reason}): the listener is not TLS, or "
                             f"wants a client certificate (kafka.ssl_certfile)") from None
        await _exchange(reader, writer, _request(_API_VERSIONS, 0, 1), 1, timeout, plain_hint)
        if k.uses_sasl:
            mech = k.sasl_mechanism.encode()
            body = await _exchange(reader, writer, _request(
                _SASL_HANDSHAKE, 1, 2, struct.pack(">h", len(mech)) + mech), 2, timeout,
                f"the listener does not offer SASL mechanism {k.sasl_mechanism} "
                f"(kafka.sasl_mechanism) or does not use SASL")
            error, offered = _parse_sasl_handshake(body)
            if error:
                if offered and k.sasl_mechanism not in offered:
                    raise _Final(f"does not offer SASL mechanism {k.sasl_mechanism} (offers "
                                 f"{', '.join(offered)}): set kafka.sasl_mechanism")
                raise _Final(f"refused the SASL handshake "
                             f"({_SASL_ERRORS.get(error, error)}): the listener may not use "
                             f"SASL (set kafka.security_protocol = PLAINTEXT or SSL)")
        else:
            # v1 with an empty topic list (brokers only): the cheapest request a SASL
            # listener refuses before authentication.
            await _exchange(reader, writer, _request(_METADATA, 1, 2, struct.pack(">i", 0)), 2,
                            timeout, "the listener wants authentication: it needs SASL "
                                     "(set kafka.security_protocol = SASL_PLAINTEXT or SASL_SSL)")
    finally:
        writer.transport.abort()


async def _login(host: str, port: int, k: KafkaSettings, timeout: float) -> None:
    """One SASL login with aiokafka's own connection: its error, not a later 'unable to
    bootstrap', says whether the credentials are wrong."""
    from aiokafka.conn import create_conn

    with quiet_aiokafka():
        try:
            conn = await asyncio.wait_for(create_conn(
                host, port, request_timeout_ms=int(timeout * 1000), **aiokafka_kwargs(k)),
                timeout)
        except TimeoutError:
            raise _Final(f"no SASL login within {timeout:.0f} s") from None
        except KafkaStartupError:
            raise
        except Exception as exc:
            raise _Final(describe_client_error(exc, k)) from None
    conn.close()


class quiet_aiokafka:
    """Hold back aiokafka's own ERROR lines while a start-up connection is tried: a failure
    is reported once, as the KafkaStartupError line."""

    def __enter__(self) -> quiet_aiokafka:
        import logging

        self.logger = logging.getLogger("aiokafka")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


async def probe(bootstrap: str, k: KafkaSettings, timeout: float | None = None) -> None:
    """Return once any bootstrap broker answers like Kafka with these settings, else raise
    KafkaStartupError within `timeout` (default kafka.connect_timeout_seconds).

    A refused or unresolved address is retried until the timeout: a broker started alongside
    the service may not be up yet. A listener that answers wrongly fails at once.
    """
    timeout = k.connect_timeout_seconds if timeout is None else timeout
    deadline = time.monotonic() + timeout
    hosts = split_hosts(bootstrap)
    if not hosts:
        raise KafkaStartupError(f"no Kafka broker address in {bootstrap!r}")
    causes: dict[str, str] = {}
    while True:
        final = 0
        for host, port in hosts:
            name = f"{host}:{port}"
            remaining = deadline - time.monotonic()
            try:
                await _probe_one(host, port, k, max(0.5, remaining))
                if k.uses_sasl:
                    await _login(host, port, k, max(0.5, deadline - time.monotonic()))
                return
            except _Final as exc:
                causes[name] = str(exc)
                final += 1
            except _Transient as exc:
                causes[name] = str(exc)
        if final == len(hosts) or time.monotonic() >= deadline - 0.05:
            raise _startup_error(causes, k)
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _startup_error(causes: Mapping[str, str], k: KafkaSettings) -> KafkaStartupError:
    detail = "; ".join(f"{name}: {cause}" for name, cause in causes.items())
    return KafkaStartupError(f"cannot use Kafka ({k.security_protocol}) at {detail}")


def describe_client_error(exc: BaseException, k: KafkaSettings) -> str:
    """A one-line cause for an error raised by an aiokafka client after the probe passed."""
    text = f"{exc.__class__.__name__}: {exc}".strip().splitlines()[0] if str(exc) else (
        exc.__class__.__name__)
    if k.uses_sasl and (isinstance(exc, KeyError) or "sasl" in text.lower()
                        or "authenticat" in text.lower()):
        return (f"SASL {k.sasl_mechanism} authentication of user {k.sasl_username!r} failed "
                f"({text}): check kafka.sasl_username and the password")
    return text
