"""A webhook receiver that accepts a request and then answers one byte every ``interval`` seconds, never
finishing in time: what a slow or hostile receiver does; ``finish()`` makes it answer the rest at once. Counts
the connections it holds at once, and optionally those of a group of receivers together (a shared ``Census``)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def read_request(connection: socket.socket) -> None:
    """The whole request, headers and body: a response sent before all of it is read can be reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return
        body += chunk


class Census:
    """Connections held at once, and the most ever held at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)

    def leave(self) -> None:
        with self._lock:
            self.open -= 1


class TrickleReceiver:
    def __init__(self, interval: float, group: Census | None = None) -> None:
        self.interval = interval
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.census = Census()
        self.censuses = [self.census] if group is None else [self.census, group]
        self.accepted = 0
        self.answered = 0  # requests given their whole response
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hurry = threading.Event()
        threading.Thread(target=self._accept, name="trickle-accept", daemon=True).start()

    @property
    def open(self) -> int:
        return self.census.open

    @property
    def most_open(self) -> int:
        return self.census.most_open

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def finish(self) -> None:
        """Answer the rest of every response at once, from now on."""
        self._hurry.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), name="trickle", daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with self._lock:
            self.accepted += 1
        for census in self.censuses:
            census.enter()
        try:
            with connection, suppress(OSError):
                connection.settimeout(5)
                read_request(connection)
                for byte in RESPONSE:
                    self._hurry.wait(self.interval)
                    if self._stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                with self._lock:
                    self.answered += 1
        finally:
            for census in self.censuses:
                census.leave()

    def close(self) -> None:
        self._stop.set()
        self._hurry.set()
        self.listener.close()
