"""One webhook attempt over HTTP(S), connecting only to the address the SSRF guard checked."""

import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from core.webhooks.addresses import Target, UnresolvableHost, UnsafeWebhookURL, resolve_target

MAX_RESPONSE_EXCERPT = 1024
USER_AGENT = "skipstep-webhooks"
DEFAULT_DEADLINE = 15.0


@dataclass(frozen=True)
class AttemptOutcome:
    status_code: int | None
    error: str | None
    duration_seconds: float
    retry_after_seconds: float | None = None
    response_excerpt: bytes = b""  # the start of the response body, for diagnostics
    refused: bool = False  # the URL broke the address rules: retrying cannot help


def deliver(
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
    deadline_seconds: float = DEFAULT_DEADLINE,
    ssl_context: ssl.SSLContext | None = None,
) -> AttemptOutcome:
    """Checks the URL afresh (DNS may have changed since the last attempt) and posts to it."""
    started = time.monotonic()
    try:
        target = resolve_target(url, allow_private)
    except UnsafeWebhookURL as exc:
        return AttemptOutcome(None, str(exc), time.monotonic() - started, refused=True)
    except UnresolvableHost as exc:
        return AttemptOutcome(None, str(exc), time.monotonic() - started)
    remaining = max(0.001, deadline_seconds - (time.monotonic() - started))
    return post(
        target, headers, body, connect_timeout, read_timeout, deadline_seconds=remaining, ssl_context=ssl_context
    )


def post(
    target: Target,
    headers: dict[str, str],
    body: bytes,
    connect_timeout: float,
    read_timeout: float,
    *,
    deadline_seconds: float = DEFAULT_DEADLINE,
    ssl_context: ssl.SSLContext | None = None,
) -> AttemptOutcome:
    """POSTs to target.connect_address with the original Host header, SNI and certificate host name.

    Redirects are returned, never followed. The connect and read timeouts bound each wait; ``deadline_seconds``
    bounds the whole attempt (connect, TLS, send, every read), so a receiver that trickles bytes cannot hold it.
    """
    address = f"[{target.connect_address}]" if ":" in target.connect_address else target.connect_address
    url = f"{target.scheme}://{address}:{target.port}{target.path}"
    request_headers = httpx.Headers(headers)
    request_headers.setdefault("user-agent", USER_AGENT)
    request_headers["host"] = target.host_header
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
    started = time.monotonic()
    deadline = started + deadline_seconds
    transport = _deadline_transport(deadline, ssl_context or httpx.create_ssl_context())
    try:
        with (
            httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client,
            client.stream(
                "POST",
                url,
                content=body,
                headers=request_headers,
                timeout=timeout,
                extensions={"sni_hostname": target.host},
            ) as response,
        ):
            excerpt = b""
            for chunk in response.iter_raw():
                excerpt += chunk
                if len(excerpt) >= MAX_RESPONSE_EXCERPT:
                    break
    except httpx.TransportError as exc:
        late = isinstance(exc, httpx.TimeoutException) and time.monotonic() >= deadline - 0.01
        error = f"no complete response within the {deadline_seconds:g} s deadline" if late else _describe(exc)
        return AttemptOutcome(None, error, time.monotonic() - started)
    return AttemptOutcome(
        status_code=response.status_code,
        error=None,
        duration_seconds=time.monotonic() - started,
        retry_after_seconds=parse_retry_after(response.headers.get("retry-after"), time.time()),
        response_excerpt=excerpt[:MAX_RESPONSE_EXCERPT],
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay seconds or HTTP-date); None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timeout"
    if isinstance(exc, httpx.WriteTimeout):
        return "write timeout"
    cause = _root_cause(exc)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause.reason or cause}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"
    return f"connection error: {cause}"


def _root_cause(exc: BaseException) -> BaseException:
    # httpx and httpcore chain their wrappers implicitly (__context__) as well as explicitly (__cause__).
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


class DeadlineExceeded(httpcore.TimeoutException):
    """The attempt's whole-exchange deadline passed before the next network operation."""


def _deadline_transport(deadline: float, ssl_context: ssl.SSLContext) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(verify=ssl_context)
    # httpx cannot be given a network backend, only its httpcore pool can: the one private attribute set here.
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_DeadlineBackend(deadline))
    return transport


def _within(deadline: float, timeout: float | None) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("deadline exceeded")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write waits no longer than what is left of the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within(self._deadline, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within(self._deadline, timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _within(self._deadline, timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _within(self._deadline, timeout), local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
