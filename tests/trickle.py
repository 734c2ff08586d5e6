"""A webhook receiver that accepts a request and then answers one byte every ``interval`` seconds, never
finishing in time: what a slow or hostile receiver does. Counts the connections it holds at once."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class TrickleReceiver:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="trickle-accept", daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

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
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            with connection, suppress(OSError):
                connection.settimeout(5)
                connection.recv(65536)  # the request (small: one read is enough on loopback)
                for byte in RESPONSE:
                    if self._stop.wait(self.interval):
                        return
                    connection.sendall(bytes([byte]))
        finally:
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
