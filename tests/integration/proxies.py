"""Listeners put in front of a plaintext embedded broker, for the TLS and SASL tests.

The bundled broker (Tansu 0.6.0) can do neither from its command line in a way a client can
log in to: `--cert` and `--key` cannot be given together, and with `--authentication` it keeps
no SCRAM credentials in its memory storage and offers no PLAIN. So the tests terminate TLS
and SASL in front of it, as a TLS load balancer or an authenticating gateway would.

`BrokerProxy` accepts connections (optionally over TLS with a required client certificate),
optionally runs the server side of SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; RFC 5802 and
KIP-84/KIP-152 framing: SaslHandshake v0/v1 then SaslAuthenticate v0/v1), refuses any other
request before authentication by closing the connection as Kafka does, then pipes the bytes
to the broker. The broker advertises the proxy's port, so every client connection goes
through it.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import threading
from collections.abc import Mapping

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


class ScramServer:
    """The server side of one SCRAM exchange (RFC 5802), against a known password."""

    def __init__(self, mechanism: str, users: Mapping[str, str], iterations: int = 4096) -> None:
        self.hash = _HASHES[mechanism]
        self.users = users
        self.iterations = iterations
        self.salt = os.urandom(16)
        self.stage = 0
        self.user: str | None = None

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash).digest()

    def step(self, data: bytes) -> tuple[bytes | None, str | None]:
        """-> (answer, error); an error ends the exchange as a failure."""
        text = data.decode()
        if self.stage == 0:
            self.stage = 1
            bare = text.split(",", 2)[2]                   # after the GS2 header "n,,"
            fields = dict(p.split("=", 1) for p in bare.split(","))
            self.user = fields["n"]
            self.client_first_bare = bare
            self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = (f"r={self.nonce},s={base64.b64encode(self.salt).decode()},"
                                 f"i={self.iterations}")
            return self.server_first.encode(), None
        without_proof, _, proof = text.rpartition(",p=")
        fields = dict(p.split("=", 1) for p in without_proof.split(","))
        password = self.users.get(self.user or "")
        if password is None or fields.get("r") != self.nonce:
            return None, "Authentication failed: Invalid username or password"
        salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), self.salt, self.iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            return None, "Authentication failed: Invalid username or password"
        server_key = self._hmac(salted, b"Server Key")
        server_sig = self._hmac(server_key, auth_message)
        self.stage = 2
        return b"v=" + base64.b64encode(server_sig), None


class BrokerProxy:
    """A listener on `port` forwarding to a plaintext broker on `upstream_port`."""

    def __init__(self, port: int, upstream_port: int, *, tls: ssl.SSLContext | None = None,
                 sasl_users: Mapping[str, str] | None = None,
                 mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
                 ) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.tls = tls
        self.sasl_users = dict(sasl_users) if sasl_users is not None else None
        self.mechanisms = mechanisms
        self.sessions = 0                    # connections that reached the broker
        self.tls_sessions = 0                # ... of them with a verified client certificate
        self.authenticated: dict[str, int] = {}   # mechanism -> successful logins
        self.failed_logins = 0
        self.refused_unauthenticated = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.tls))
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.sasl_users is not None and not await self._authenticate(
                    reader, writer, up_reader, up_writer):
                writer.close()
                up_writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            writer.close()
            up_writer.close()
            return
        self.sessions += 1
        if self.tls is not None and writer.get_extra_info("peercert"):
            self.tls_sessions += 1
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader,
                            up_writer: asyncio.StreamWriter) -> bool:
        """Answer SASL until a login succeeds (True) or fails or breaks the rules (False)."""
        mechanism: str | None = None
        scram: ScramServer | None = None
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            frame = await reader.readexactly(size)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            (client_len,) = struct.unpack(">h", frame[8:10])
            body = frame[10 + max(0, client_len):]
            if api_key == API_VERSIONS:           # allowed before authentication: the broker's
                up_writer.write(struct.pack(">i", size) + frame)
                await up_writer.drain()
                (rsize,) = struct.unpack(">i", await up_reader.readexactly(4))
                writer.write(struct.pack(">i", rsize) + await up_reader.readexactly(rsize))
                await writer.drain()
                continue
            if api_key == SASL_HANDSHAKE and version <= 1:
                (n,) = struct.unpack(">h", body[:2])
                wanted = body[2:2 + n].decode()
                ok = wanted in self.mechanisms
                answer = struct.pack(">h", 0 if ok else UNSUPPORTED_SASL_MECHANISM)
                answer += struct.pack(">i", len(self.mechanisms))
                answer += b"".join(_string(m) for m in self.mechanisms)
                self._answer(writer, correlation, answer)
                if not ok:
                    return False
                mechanism = wanted
                if mechanism in _HASHES:
                    scram = ScramServer(mechanism, self.sasl_users or {})
                continue
            if api_key == SASL_AUTHENTICATE and version <= 1 and mechanism is not None:
                (n,) = struct.unpack(">i", body[:4])
                token = body[4:4 + n]
                if scram is not None:
                    reply, error = scram.step(token)
                else:
                    _, user, password = token.decode().split("\x00")
                    ok = self.sasl_users is not None and self.sasl_users.get(user) == password
                    reply, error = (b"", None) if ok else (
                        None, "Authentication failed: Invalid username or password")
                answer = struct.pack(">h", SASL_AUTHENTICATION_FAILED if error else 0)
                answer += _string(error) + _bytes(reply or b"")
                if version >= 1:
                    answer += struct.pack(">q", 0)
                self._answer(writer, correlation, answer)
                await writer.drain()
                if error:
                    self.failed_logins += 1
                    return False
                if scram is None or scram.stage == 2:
                    self.authenticated[mechanism] = self.authenticated.get(mechanism, 0) + 1
                    return True
                continue
            self.refused_unauthenticated += 1     # Kafka closes such a connection
            return False

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
        payload = struct.pack(">i", correlation) + body
        writer.write(struct.pack(">i", len(payload)) + payload)


def make_certs(directory: os.PathLike[str] | str) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    made with the openssl command; -> file name -> path."""
    import subprocess
    from pathlib import Path

    d = Path(directory)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=vitals-test-ca")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (d / f"{name}.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            f"keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")
    return {name: str(d / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def server_tls(certs: Mapping[str, str], require_client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs["ca.pem"])
    ctx.load_cert_chain(certs["server.pem"], certs["server.key"])
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx
