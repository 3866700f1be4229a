"""Webhooks must not become a way to reach private hosts (SSRF).

Every attempt resolves the host itself, refuses any non-global address unless the operator
allow-listed the host (settings.WEBHOOK_ALLOWED_HOSTS), then connects to the very address it
vetted, keeping the original Host header and TLS SNI / certificate name. Checking only when
the URL is saved is not enough: DNS can answer differently a second later (rebinding), and
letting the HTTP library resolve again would connect wherever that second answer points.

Redirects are never followed: a receiver could bounce us to http://169.254.169.254/.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges `is_global` would let through or that deserve their own words in the message.
_NAMED_RANGES: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
    (ipaddress.ip_network("169.254.169.254/32"), "the cloud metadata service"),
    (ipaddress.ip_network("100.64.0.0/10"), "a carrier-grade NAT (CGNAT) address"),
    (ipaddress.ip_network("0.0.0.0/8"), "an unspecified address"),
    (ipaddress.ip_network("192.0.0.0/24"), "an IETF protocol address"),
    (ipaddress.ip_network("198.18.0.0/15"), "a benchmarking address"),
    # Reserved for examples in documentation (RFC 5737, RFC 3849): Python calls them
    # "private", which they are not.
    (ipaddress.ip_network("192.0.2.0/24"), "a documentation (TEST-NET-1) address"),
    (ipaddress.ip_network("198.51.100.0/24"), "a documentation (TEST-NET-2) address"),
    (ipaddress.ip_network("203.0.113.0/24"), "a documentation (TEST-NET-3) address"),
    (ipaddress.ip_network("2001:db8::/32"), "a documentation address"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# How much of a receiver's answer is read and kept: enough to show an error page's gist.
_MAX_READ = 64 * 1024


class Refused(Exception):
    """The URL points somewhere Parity will not send to; the message says why, for the user."""


class ResolveError(Exception):
    """DNS did not answer: may be temporary, so worth retrying."""


def non_global_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:a.b.c.d is never a real receiver's AAAA record, only a way to smuggle an
        # IPv4 address past a v6-only check: refused outright.
        if address.ipv4_mapped is not None:
            inner = non_global_reason(address.ipv4_mapped)
            return "an IPv4-mapped IPv6 address" + (f" of {inner}" if inner else "")
        # Other IPv4-in-IPv6 encodings reach the IPv4 host: judge the IPv4 one.
        mapped = address.sixtofour
        if mapped is None and address in _NAT64:
            mapped = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if mapped is None and address.teredo:
            mapped = address.teredo[1]
        if mapped is not None:
            inner = non_global_reason(mapped)
            return f"an IPv6 address embedding {inner}" if inner else None
    for network, name in _NAMED_RANGES:
        if address.version == network.version and address in network:
            return name
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a non-public address"
    return None


def _allowed(host: str, address: IPAddress, allow: Iterable[str]) -> bool:
    """The operator's allow-list: host names, IP addresses or networks (10.1.0.0/16)."""
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.strip().lower().rstrip(".")
        if not entry:
            continue
        if entry == host:
            return True
        try:
            if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class Target:
    """A URL and the vetted addresses it may be reached at, in the order to try them."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]
    netloc_host_header: str = field(default="")


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveError(f"Could not resolve {host}: {exc}") from exc
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]
        if ip not in seen:
            seen.append(ip)
    return seen


def vet(url: str, allow: Iterable[str] | None = None) -> Target:
    """Resolve `url`'s host and return the addresses Parity may connect to.

    Raises Refused (for good) when the URL is malformed or any address it resolves to is
    not public and not allow-listed; ResolveError when DNS fails (try again later).
    Refusing on *any* bad address, not just skipping it, keeps a host that answers both a
    public and a private address from being a coin toss.
    """
    allow = list(settings.WEBHOOK_ALLOWED_HOSTS if allow is None else allow)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"{url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise Refused(f"Only http:// and https:// webhook URLs are allowed, not {parts.scheme!r}.")
    host = parts.hostname
    if not host:
        raise Refused(f"{url!r} has no host.")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    ips = [str(literal)] if literal is not None else resolve(host, port)
    if not ips:
        raise ResolveError(f"{host} resolved to no address.")
    for ip in ips:
        address = ipaddress.ip_address(ip)
        if _allowed(host, address, allow):
            continue
        reason = non_global_reason(address)
        if reason:
            shown = host if literal is not None else f"{host} (resolves to {ip})"
            raise Refused(
                f"Refused to send to {shown}: it is {reason}. Webhooks only go to public "
                "addresses; an operator can allow this host with WEBHOOK_ALLOWED_HOSTS."
            )
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(url, parts.scheme, host, port, tuple(ips), host_header)


@dataclass(frozen=True)
class Answer:
    """What a receiver said: kept on the attempt and shown on the endpoint page."""

    status_code: int
    body: str
    headers: Mapping[str, str]
    latency_ms: int
    address: str


class NetworkError(Exception):
    """Nothing usable came back (refused, reset, timed out): worth retrying."""

    def __init__(self, message: str, latency_ms: int) -> None:
        super().__init__(message)
        self.latency_ms = latency_ms


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connect_timeout: float | None = None,
    total_timeout: float | None = None,
    allow: Iterable[str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Answer:
    """POST `body` to `url` through the SSRF guard, never following a redirect.

    Raises Refused, ResolveError or NetworkError; any HTTP status comes back as an Answer.
    The total timeout bounds the whole exchange (connect, send, wait, read): per-operation
    socket timeouts alone would let a receiver that drips a byte every few seconds hold a
    worker indefinitely.
    """
    connect_timeout = (
        settings.WEBHOOK_CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    )
    total_timeout = settings.WEBHOOK_TOTAL_TIMEOUT_S if total_timeout is None else total_timeout
    target = vet(url, allow)
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook")
    future = pool.submit(
        _exchange, target, body, headers, connect_timeout, total_timeout, started, verify
    )
    try:
        return future.result(timeout=total_timeout)
    except FutureTimeout:
        raise NetworkError(
            f"No complete answer within {total_timeout:g} s (total timeout).",
            int(total_timeout * 1000),
        ) from None
    finally:
        # A timed-out exchange is abandoned; its own socket timeouts end it shortly after.
        pool.shutdown(wait=False)


def _exchange(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    connect_timeout: float,
    total_timeout: float,
    started: float,
    verify: ssl.SSLContext | bool = True,
) -> Answer:
    parts = urlsplit(target.url)
    last_error = "no address to try"
    for ip in target.addresses:
        shown_ip = f"[{ip}]" if ":" in ip else ip
        # Connect to the vetted address itself; Host and SNI keep the name the receiver expects.
        direct = urlunsplit(
            (parts.scheme, f"{shown_ip}:{target.port}", parts.path or "/", parts.query, "")
        )
        request_headers = {**headers, "Host": target.netloc_host_header}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        timeout = httpx.Timeout(total_timeout, connect=connect_timeout)
        try:
            # trust_env=False: an HTTP(S)_PROXY from the environment would make the proxy,
            # not us, pick the address.
            with httpx.Client(
                timeout=timeout, follow_redirects=False, trust_env=False, verify=verify
            ) as client:
                request = client.build_request(
                    "POST", direct, content=body, headers=request_headers, extensions=extensions
                )
                response = client.send(request, stream=True)
                try:
                    data = bytearray()
                    for chunk in response.iter_raw():
                        data.extend(chunk)
                        if len(data) >= _MAX_READ:
                            break
                finally:
                    response.close()
        except httpx.ConnectError as exc:
            last_error = f"Could not connect to {target.host} ({ip}): {_reason(exc)}"
            continue
        except httpx.TimeoutException as exc:
            raise NetworkError(
                f"Timed out talking to {target.host} ({ip}): {type(exc).__name__}",
                _ms(started),
            ) from exc
        except httpx.HTTPError as exc:
            raise NetworkError(
                f"Network error talking to {target.host} ({ip}): {_reason(exc)}", _ms(started)
            ) from exc
        return Answer(
            status_code=response.status_code,
            body=bytes(data).decode("utf-8", errors="replace"),
            headers=dict(response.headers),
            latency_ms=_ms(started),
            address=ip,
        )
    raise NetworkError(last_error, _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]
