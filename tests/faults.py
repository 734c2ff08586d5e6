"""Fault injection for the durability tests: a TCP proxy that can drop every connection (a database or a
store that is briefly unreachable), and stacks of real processes on their own database and broker."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from service import Service, fresh_database, launch, redis_on, start_redis, stop_process

from core.settings import Settings


class TcpProxy:
    """Forwards a free loopback port to ``target_port``. ``cut()`` drops every open connection and closes
    new ones at once until ``restore()``, as a peer that went away and came back does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for connection in self._open:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@dataclass
class Stack:
    """A service on its own database and its own redis-server, which a test may kill and restart."""

    service: Service
    broker: subprocess.Popen[bytes]
    broker_url: str
    broker_dir: Path

    def restart_broker_empty(self) -> None:
        """SIGKILL the broker and start an empty one on the same port: every message in it is gone."""
        self.broker.kill()
        self.broker.wait(timeout=10)
        for leftover in self.broker_dir.iterdir():
            leftover.unlink()
        port = int(self.broker_url.rsplit(":", 1)[1].split("/")[0])
        restarted = redis_on(port, self.broker_dir)
        assert restarted is not None, "the broker's port was taken while it restarted"
        self.broker = restarted

    def queued_messages(self, model: str = "wan-tiny") -> int:
        return int(redis.Redis.from_url(self.broker_url).llen(f"generate.{model}"))


# Short heartbeats and leases, so that recovery is quick enough to test.
DURABLE = {
    "SKIPSTEP_HEARTBEAT_SECONDS": "0.5",
    "SKIPSTEP_JOB_LEASE_SECONDS": "2",
    "SKIPSTEP_REDISPATCH_SECONDS": "2",
    "SKIPSTEP_STALL_SECONDS": "60",
    # Workers come and go in these tests; one thread each keeps them from crowding two cores.
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture
def stack(settings: Settings, wan_tiny: object, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Makes stacks (API process, own PostgreSQL database, own redis-server, local video storage); every
    process a test starts through them is stopped at the end, by process id."""
    with ExitStack() as cleanup:

        def make(database_url: str | None = None, **env: str) -> Stack:
            home = Path(tempfile.mkdtemp(dir=tmp_path, prefix="stack-"))
            url = database_url or cleanup.enter_context(fresh_database())
            broker_dir = home / "redis"
            broker_dir.mkdir()
            (home / "videos").mkdir()
            process, broker_url = start_redis(broker_dir)
            values = DURABLE | {"SKIPSTEP_STORAGE_DIR": str(home / "videos")} | env
            made = Stack(launch(settings, url, broker_url, home, **values), process, broker_url, broker_dir)
            cleanup.callback(lambda: stop_process(made.broker))
            cleanup.callback(made.service.stop)
            return made

        yield make
