"""No request waits on another's blocking work: while a POST /v1/videos waits on the DNS lookup of its webhook
host, another client's request is answered. The lookup is made slow for real: an API process in a mount
namespace of its own reads a resolv.conf naming a DNS server here that answers after DELAY seconds."""

from __future__ import annotations

import os
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service import Service, free_port, stop_process, wait_until

DELAY = 4.0
HOST = "slow-hook.test"


class SlowDns:
    """A UDP DNS server that answers every A query with 127.0.0.1 (AAAA: no records) after ``delay`` seconds."""

    def __init__(self, address: str, delay: float) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((address, 53))
        self.socket.settimeout(0.2)
        self.delay = delay
        self.queries: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                packet, client = self.socket.recvfrom(512)
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(packet, client), daemon=True).start()

    def _answer(self, packet: bytes, client: tuple[str, int]) -> None:
        end = 12
        labels = []
        while packet[end]:
            labels.append(packet[end + 1 : end + 1 + packet[end]].decode())
            end += packet[end] + 1
        question = packet[12 : end + 5]
        (qtype,) = struct.unpack("!H", packet[end + 1 : end + 3])
        self.queries.append(".".join(labels))
        time.sleep(self.delay)
        answers = [struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, socket.inet_aton("127.0.0.1"))] if qtype == 1 else []
        header = packet[:2] + struct.pack("!HHHHH", 0x8180, 1, len(answers), 0, 0)
        if self.running:
            self.socket.sendto(header + question + b"".join(answers), client)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.socket.close()


def _private_mounts_allowed() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def slow_resolving_api(api_alone: Service, tmp_path: Path) -> Iterator[tuple[str, SlowDns]]:
    """Another API process on api_alone's database and Redis whose name lookups go to a SlowDns."""
    if os.geteuid() != 0 or not _private_mounts_allowed():
        pytest.skip("needs root and mount namespaces (unshare -m) to give one process its own resolv.conf")
    address = f"127.53.{os.getpid() % 250 + 1}.{int(time.time()) % 250 + 1}"
    dns = SlowDns(address, DELAY)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\noptions timeout:30 attempts:1\n")
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)]
    script = f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf && exec {shlex.join(uvicorn)}"
    env = api_alone.env | {"SKIPSTEP_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "api.log").open("ab")
    process = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    try:
        wait_until(up, 60, 0.2, "the API with a slow resolver to start")
        assert process.poll() is None, (tmp_path / "api.log").read_text()
        yield url, dns
    finally:
        stop_process(process)
        dns.close()


def test_a_submit_waiting_on_dns_does_not_hold_up_other_requests(
    api_alone: Service, slow_resolving_api: tuple[str, SlowDns]
) -> None:
    url, dns = slow_resolving_api
    body = {"prompt": "a fox", "size": "64x64", "seconds": "1", "webhook_url": f"http://{HOST}:9/hook"}
    alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_alone.keys['alice']}"}, timeout=60)
    bob = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_alone.keys['bob']}"}, timeout=60)
    with alice, bob, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        submit = pool.submit(alice.post, "/v1/videos", json=body)
        wait_until(lambda: HOST in dns.queries, 10, 0.02, "the submit to look its webhook host up")
        asked = time.monotonic()
        listed = bob.get("/v1/videos")
        answered = time.monotonic() - asked
        still_waiting = not submit.done()
        created = submit.result(timeout=60)
    assert listed.status_code == 200, listed.text
    assert answered < 1.0, f"another client waited {answered:.2f} s behind a submit's DNS lookup"
    assert still_waiting, "the lookup ended before the other request was answered: the test showed nothing"
    assert created.status_code == 200, created.text
    assert time.monotonic() - started >= DELAY
    with api_alone.client() as caller:
        caller.delete(f"/v1/videos/{created.json()['id']}")
