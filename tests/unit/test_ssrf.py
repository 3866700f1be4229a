"""The SSRF guard: what is refused, that nothing is connected to before refusing, that the
vetted address is the one connected to, and that redirects are never followed.

Only loopback traffic ever leaves these tests: every connection goes through `connections`,
which fails the test for any other address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dashboard.alerts import ssrf
from dashboard.alerts.models import Delivery, WebhookEndpoint
from dashboard.alerts.transports import Standard, TransportError

pytestmark = pytest.mark.unit

LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket connects to in this test; non-loopback ones fail the test."""
    seen: list[str] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = str(address[0])
        seen.append(host)
        if host not in LOOPBACK:
            raise AssertionError(f"test tried to connect to {host}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Fake DNS: names map to the addresses the test puts in this dict."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (ip, port) if ":" not in ip else (ip, port, 0, 0),
                )
                for ip in table[host]
            ]
        if host in ("localhost", "127.0.0.1", "::1"):
            return real(host, port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "not in the test resolver")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def receiver() -> Iterator[dict[str, Any]]:
    """An in-process HTTP server on 127.0.0.1; `state["status"]`/`["location"]` drive it."""
    state: dict[str, Any] = {"status": 200, "location": "", "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["requests"].append({"headers": dict(self.headers.items()), "body": body})
            self.send_response(state["status"])
            if state["location"]:
                self.send_header("Location", state["location"])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["port"] = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def delivery_to(url: str) -> tuple[Standard, Delivery]:
    endpoint = WebhookEndpoint(name="r", url=url, secret=WebhookEndpoint.new_secret())
    return Standard(endpoint), Delivery(endpoint=endpoint, event="test", body=json.dumps({"x": 1}))


REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]:8080/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.1.10/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[64:ff9b::a00:1]/", "private"),
    # #16 §14: documentation ranges are not "private" (RFC 5737, RFC 3849).
    ("http://192.0.2.1/", r"documentation \(TEST-NET-1\)"),
    ("http://198.51.100.7/", r"documentation \(TEST-NET-2\)"),
    ("http://203.0.113.9/", r"documentation \(TEST-NET-3\)"),
    ("http://[2001:db8::1]/", "documentation address"),
]


@pytest.mark.parametrize("url,reason", REFUSED)
def test_non_global_addresses_are_refused(url: str, reason: str, settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(ssrf.Refused, match=reason):
        ssrf.vet(url)


@pytest.mark.parametrize("url,reason", REFUSED)
def test_refused_before_any_connection(
    url: str, reason: str, settings: Any, connections: list[str]
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    transport, delivery = delivery_to(url)
    with pytest.raises(TransportError) as err:
        transport.send(delivery)
    assert err.value.permanent
    assert "WEBHOOK_ALLOWED_HOSTS" in err.value.message
    assert connections == []


def test_a_name_resolving_to_a_private_address_is_refused(
    settings: Any, resolver: dict[str, list[str]], connections: list[str]
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    resolver["hooks.example.com"] = ["10.1.2.3"]
    transport, delivery = delivery_to("https://hooks.example.com/in")
    with pytest.raises(TransportError, match=r"hooks.example.com \(resolves to 10.1.2.3\)"):
        transport.send(delivery)
    assert connections == []


def test_localhost_by_name_is_refused(settings: Any, connections: list[str]) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(ssrf.Refused, match="loopback"):
        ssrf.vet("http://localhost:9/")
    assert connections == []


def test_any_private_answer_among_several_refuses(
    settings: Any, resolver: dict[str, list[str]]
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    resolver["mixed.example.com"] = ["93.184.215.14", "127.0.0.1"]
    with pytest.raises(ssrf.Refused, match="127.0.0.1"):
        ssrf.vet("http://mixed.example.com/")


def test_dns_rebinding_is_caught_at_the_attempt(
    settings: Any, resolver: dict[str, list[str]], connections: list[str]
) -> None:
    # Public when the endpoint was saved, metadata service when the webhook goes out.
    settings.WEBHOOK_ALLOWED_HOSTS = []
    resolver["rebind.example.com"] = ["93.184.215.14"]
    assert ssrf.vet("http://rebind.example.com/").addresses == ("93.184.215.14",)
    resolver["rebind.example.com"] = ["169.254.169.254"]
    transport, delivery = delivery_to("http://rebind.example.com/")
    with pytest.raises(TransportError, match="metadata"):
        transport.send(delivery)
    assert connections == []


def test_public_addresses_pass(settings: Any, resolver: dict[str, list[str]]) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    resolver["hooks.slack.com"] = ["34.0.0.1", "2600:1f18::1"]
    target = ssrf.vet("https://hooks.slack.com/services/x")
    assert target.addresses == ("34.0.0.1", "2600:1f18::1") and target.port == 443


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "gopher://x/"]
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(ssrf.Refused):
        ssrf.vet(url, allow=[])


def test_allow_list_by_name_address_or_network(resolver: dict[str, list[str]]) -> None:
    resolver["onprem.corp"] = ["10.20.0.5"]
    assert ssrf.vet("http://onprem.corp/", allow=["onprem.corp"]).addresses == ("10.20.0.5",)
    assert ssrf.vet("http://onprem.corp/", allow=["10.20.0.0/16"]).addresses == ("10.20.0.5",)
    assert ssrf.vet("http://10.0.0.1/", allow=["10.0.0.1"]).addresses == ("10.0.0.1",)
    with pytest.raises(ssrf.Refused):
        ssrf.vet("http://onprem.corp/", allow=["other.corp", "10.30.0.0/16"])


def test_connects_to_the_vetted_address_keeping_the_host_header(
    settings: Any, resolver: dict[str, list[str]], receiver: dict[str, Any], connections: list[str]
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["hook.internal.test"]
    resolver["hook.internal.test"] = ["127.0.0.1"]
    port = receiver["port"]
    transport, delivery = delivery_to(f"http://hook.internal.test:{port}/in?x=1")
    answer = transport.send(delivery)
    assert answer.status_code == 200 and answer.address == "127.0.0.1"
    assert connections == ["127.0.0.1"]
    assert receiver["requests"][0]["headers"]["Host"] == f"hook.internal.test:{port}"


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://127.0.0.1:1/"],
)
def test_a_redirect_is_not_followed(
    target: str, settings: Any, receiver: dict[str, Any], connections: list[str]
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    receiver["status"], receiver["location"] = 302, target
    transport, delivery = delivery_to(f"http://127.0.0.1:{receiver['port']}/hook")
    with pytest.raises(TransportError, match="does not follow redirects") as err:
        transport.send(delivery)
    assert err.value.permanent and err.value.answer is not None
    assert err.value.answer.status_code == 302
    # One request, to the receiver only: the Location was never visited.
    assert len(receiver["requests"]) == 1
    assert connections == ["127.0.0.1"]


def test_every_named_address_kind() -> None:
    reasons = {
        ip: ssrf.non_global_reason(ipaddress.ip_address(ip))
        for ip in ["8.8.8.8", "2606:4700::1111", "127.0.0.2", "::ffff:8.8.8.8", "2002:a00:1::1"]
    }
    assert reasons["8.8.8.8"] is None and reasons["2606:4700::1111"] is None
    assert reasons["127.0.0.2"] == "a loopback address"
    assert "IPv4-mapped" in str(reasons["::ffff:8.8.8.8"])
    assert "private" in str(reasons["2002:a00:1::1"])  # 6to4 wrapping 10.0.0.1


def _self_signed(tmp_path: Any, name: str) -> tuple[str, str]:
    from datetime import UTC, datetime, timedelta

    pytest.importorskip("cryptography")

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("cert_name,ok", [("hook.internal.test", True), ("other.test", False)])
def test_https_to_the_vetted_address_checks_the_certificate_for_the_host_name(
    cert_name: str,
    ok: bool,
    tmp_path: Any,
    receiver: dict[str, Any],
    resolver: dict[str, list[str]],
    connections: list[str],
) -> None:
    # Connecting to an IP must not weaken TLS: SNI and the certificate check use the name.
    import ssl

    cert, key = _self_signed(tmp_path, cert_name)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TlsHandler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        resolver["hook.internal.test"] = ["127.0.0.1"]
        client_ctx = ssl.create_default_context(cafile=cert)
        url = f"https://hook.internal.test:{server.server_address[1]}/in"
        if ok:
            answer = ssrf.post(url, b"{}", {}, allow=["hook.internal.test"], verify=client_ctx)
            assert answer.status_code == 200 and answer.body == "hook.internal.test"
        else:
            with pytest.raises(ssrf.NetworkError):
                ssrf.post(url, b"{}", {}, allow=["hook.internal.test"], verify=client_ctx)
        assert set(connections) == {"127.0.0.1"}
    finally:
        server.shutdown()
        server.server_close()


class _TlsHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        host = self.headers.get("Host", "").split(":")[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(host)))
        self.end_headers()
        self.wfile.write(host)

    def log_message(self, *args: object) -> None:
        pass
