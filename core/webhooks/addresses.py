"""SSRF guard: which webhook URLs may be called, and the checked address to call them on."""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"({_LABEL}\.)*{_LABEL}\.?")
# A last label of digits or hex is not a DNS name, and getaddrinfo reads forms like 127.1 or 0x7f.1 as addresses.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


class UnsafeWebhookURL(ValueError):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


class UnresolvableHost(OSError):
    """Name resolution failed; unlike UnsafeWebhookURL this may pass on a later attempt."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower case; IPv6 literals without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]  # every address the host resolved to, each checked unless private ones are allowed
    connect_address: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: int
    path: str


def check_url_syntax(url: str, allow_private: bool = False) -> None:
    """Checks all that needs no DNS, including that an IP-literal host is public unless allow_private."""
    parts = _split(url)
    literal = _literal_address(parts.host)
    if literal is not None and not allow_private:
        _check_public(literal)


def resolve_target(url: str, allow_private: bool) -> Target:
    parts = _split(url)
    literal = _literal_address(parts.host)
    addresses = [literal] if literal is not None else _resolve(parts.host, parts.port)
    if not allow_private:
        for address in addresses:
            _check_public(address)
    texts = tuple(str(address) for address in addresses)
    return Target(parts.scheme, parts.host, parts.port, parts.path, texts, texts[0])


def _split(url: str) -> _Parts:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookURL(f"webhook URL must be at most {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise UnsafeWebhookURL("webhook URL must be ASCII without spaces or control characters (percent-encode them)")
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"webhook URL must be a valid URL: {exc}") from None
    if split.scheme not in DEFAULT_PORTS:
        raise UnsafeWebhookURL("webhook URL must use http or https")
    if "@" in split.netloc:
        raise UnsafeWebhookURL("webhook URL must not contain a user name or password")
    host = split.hostname
    if not host:
        raise UnsafeWebhookURL("webhook URL must name a host")
    if port == 0:
        raise UnsafeWebhookURL("webhook URL port must be between 1 and 65535")
    if _literal_address(host) is None and (
        len(host) > 254
        or not _HOST_NAME.fullmatch(host)
        or _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1])
    ):
        raise UnsafeWebhookURL(f"webhook URL host must be a DNS name or an IP address in canonical form, not {host!r}")
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return _Parts(split.scheme, host, port or DEFAULT_PORTS[split.scheme], path)


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"could not resolve {host}: {exc}") from None
    # dict.fromkeys drops duplicates and keeps the resolver's preference order.
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise UnresolvableHost(f"could not resolve {host}: no addresses")
    return addresses


def _check_public(address: IPAddress) -> None:
    problem = _non_public_kind(address)
    if problem is not None:
        raise UnsafeWebhookURL(f"webhook URL must resolve to a public address; {address} is {problem}")


def _non_public_kind(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge the IPv4 address.
        for ipv4 in (address.ipv4_mapped, address.sixtofour):
            if ipv4 is not None and (kind := _non_public_kind(ipv4)) is not None:
                return f"{kind} (IPv4 {ipv4})"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((kind for kind, applies in checks if applies), None)
