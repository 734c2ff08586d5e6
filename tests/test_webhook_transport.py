import datetime
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook
from trickle import TrickleReceiver

from core.webhooks import Target, deliver, headers, new_secret, parse_retry_after, post

BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Server:
    port: int
    received: list[Received] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)

    def target(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> Target:
        return Target(scheme, host, self.port, path, ("127.0.0.1",), "127.0.0.1")


class Handler(BaseHTTPRequestHandler):
    server: "RecordingServer"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.record.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/redirect":
            self._reply(302, {"Location": f"http://127.0.0.1:{self.server.record.port}/ok"})
        elif self.path == "/busy":
            self._reply(503, {"Retry-After": "120"})
        elif self.path == "/slow":
            time.sleep(1)
            self._reply(200)
        elif self.path == "/big":
            self._reply(200, payload=b"x" * 100_000)
        else:
            self._reply(200, payload=b"thanks")

    def _reply(self, status: int, extra: dict[str, str] | None = None, payload: bytes = b"") -> None:
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    record: Server

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the slow handler writes to a socket the client has given up on


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    httpd = RecordingServer(("127.0.0.1", 0), Handler)
    httpd.record = Server(httpd.server_address[1])
    if tls is not None:
        tls.sni_callback = lambda _socket, name, _context: httpd.record.sni_names.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.record
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve()


def test_signed_request_arrives_and_verifies(server: Server) -> None:
    secret = new_secret()
    sent = headers([secret], "msg_1", int(time.time()), BODY)
    outcome = post(server.target("/hooks/in?x=1"), sent, BODY, connect_timeout=2, read_timeout=2)
    assert outcome.status_code == 200
    assert outcome.error is None
    assert outcome.response_excerpt == b"thanks"
    assert outcome.retry_after_seconds is None
    assert outcome.duration_seconds > 0  # how long: bench/webhook_timing.py
    [request] = server.received
    assert request.path == "/hooks/in?x=1"
    assert request.body == BODY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "skipstep-webhooks"
    assert Webhook(secret).verify(request.body, request.headers) == {"type": "job.succeeded", "data": {"id": "job_1"}}


def test_connects_to_the_checked_address_with_the_original_host(server: Server) -> None:
    # example.invalid never resolves: the request can only arrive through the checked address.
    outcome = post(server.target("/ok", host="example.invalid"), {}, BODY, connect_timeout=2, read_timeout=2)
    assert outcome.status_code == 200
    assert server.received[0].headers["host"] == f"example.invalid:{server.port}"


def test_redirect_is_returned_not_followed(server: Server) -> None:
    outcome = post(server.target("/redirect"), {}, BODY, connect_timeout=2, read_timeout=2)
    assert outcome.status_code == 302
    assert [request.path for request in server.received] == ["/redirect"]


def test_retry_after_is_parsed(server: Server) -> None:
    outcome = post(server.target("/busy"), {}, BODY, connect_timeout=2, read_timeout=2)
    assert (outcome.status_code, outcome.retry_after_seconds) == (503, 120.0)


def test_response_excerpt_is_bounded(server: Server) -> None:
    outcome = post(server.target("/big"), {}, BODY, connect_timeout=2, read_timeout=2)
    assert outcome.status_code == 200
    assert outcome.response_excerpt == b"x" * 1024


def test_slow_server_gives_a_read_timeout(server: Server) -> None:
    outcome = post(server.target("/slow"), {}, BODY, connect_timeout=2, read_timeout=0.2)
    assert outcome.status_code is None
    assert outcome.error == "read timeout"  # the server answers only after 1 s
    assert outcome.duration_seconds >= 0.2


def test_closed_port_gives_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = Target("http", "127.0.0.1", port, "/", ("127.0.0.1",), "127.0.0.1")
    outcome = post(target, {}, BODY, connect_timeout=2, read_timeout=2)
    assert (outcome.status_code, outcome.error) == (None, "connection refused")


def test_deliver_checks_the_url_before_connecting(server: Server) -> None:
    url = f"http://localhost:{server.port}/ok"
    refused = deliver(url, {}, BODY, allow_private=False, connect_timeout=2, read_timeout=2)
    assert refused.refused
    assert refused.error == "webhook URL must resolve to a public address; 127.0.0.1 is loopback"
    assert server.received == []
    allowed = deliver(url, {}, BODY, allow_private=True, connect_timeout=2, read_timeout=2)
    assert (allowed.status_code, allowed.refused) == (200, False)
    assert server.received[0].headers["host"] == f"localhost:{server.port}"


def test_deliver_reports_unresolvable_hosts_as_retryable_errors() -> None:
    outcome = deliver("https://nowhere.invalid/", {}, BODY, allow_private=False, connect_timeout=2, read_timeout=2)
    assert outcome.status_code is None
    assert not outcome.refused
    assert outcome.error is not None and outcome.error.startswith("could not resolve nowhere.invalid")


@dataclass
class Certificates:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if subject == issuer:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key)
    leaf = certificate("hooks.example.invalid", leaf_key, "test CA", ca_key)
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Certificates(server, client)


@pytest.fixture
def tls_server(certificates: Certificates) -> Iterator[Server]:
    yield from _serve(certificates.server)


def test_https_uses_the_original_host_for_sni_and_certificate(tls_server: Server, certificates: Certificates) -> None:
    target = tls_server.target("/ok", host="hooks.example.invalid", scheme="https")
    outcome = post(target, {}, BODY, connect_timeout=2, read_timeout=2, ssl_context=certificates.client)
    assert (outcome.status_code, outcome.error) == (200, None)
    assert tls_server.sni_names == ["hooks.example.invalid"]
    assert tls_server.received[0].headers["host"] == f"hooks.example.invalid:{tls_server.port}"


def test_https_refuses_a_certificate_for_another_host(tls_server: Server, certificates: Certificates) -> None:
    target = tls_server.target("/ok", host="other.example.invalid", scheme="https")
    outcome = post(target, {}, BODY, connect_timeout=2, read_timeout=2, ssl_context=certificates.client)
    assert outcome.status_code is None
    assert outcome.error is not None and outcome.error.startswith(
        "TLS certificate verification failed: Hostname mismatch"
    )
    assert tls_server.received == []


def test_parse_retry_after() -> None:
    now = time.time()
    later = datetime.datetime.fromtimestamp(int(now) + 90, datetime.UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == pytest.approx(90, abs=1)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("1.5", now) is None
    assert parse_retry_after("soon", now) is None


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline() -> None:
    # One byte every 0.3 s keeps every read under its 2 s timeout: only the whole-attempt deadline ends it.
    receiver = TrickleReceiver(interval=0.3)
    try:
        target = Target("http", "127.0.0.1", receiver.port, "/hook", ("127.0.0.1",), "127.0.0.1")
        outcome = post(target, {}, BODY, connect_timeout=2, read_timeout=2, deadline_seconds=1.0)
    finally:
        receiver.close()
    assert outcome.status_code is None
    assert outcome.error == "no complete response within the 1 s deadline"
    assert 1.0 <= outcome.duration_seconds < 3.0
