from fractions import Fraction
from pathlib import Path

import av


def test_cli_writes_an_mp4_with_the_requested_frames_size_and_fps(cli, home: Path, tmp_path: Path, wan_tiny) -> None:
    out = tmp_path / "fox.mp4"
    result = cli(
        home,
        "generate",
        "--prompt",
        "a red fox",
        "--width",
        "96",
        "--height",
        "64",
        "--num-frames",
        "13",
        "--steps",
        "3",
        "--fps",
        "12",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 13 frames 96x64 at 12 fps, 3 steps" in result.stdout
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (96, 64)
        assert stream.average_rate == Fraction(12)
        assert sum(1 for _ in container.decode(stream)) == 13


def test_cli_reports_a_missing_model_without_a_traceback(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.mp4"
    result = cli(home, "generate", "--prompt", "x", "--model", str(tmp_path / "nowhere"), "--out", str(out))
    assert result.returncode == 2
    assert f"error: model directory {tmp_path / 'nowhere'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_prints_the_schedule_and_the_figures(cli, home: Path, tmp_path: Path, wan_tiny) -> None:
    out = tmp_path / "cached.mp4"
    result = cli(
        home,
        "generate",
        "--prompt",
        "a red fox",
        "--width",
        "64",
        "--height",
        "64",
        "--num-frames",
        "9",
        "--steps",
        "10",
        "--cache",
        "magcache",
        "--cache-param",
        "threshold=0.12",
        "--cache-param",
        "max_skip_steps=2",
        "--compare",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "planned schedule (C computed, . reused)" in result.stderr
    assert (
        "cache magcache {'predictor': 'reuse', 'predictor_order': 1, "
        "'threshold': 0.12, 'max_skip_steps': 2, 'retention_ratio': 0.2}" in result.stdout
    )
    assert "profile wan-tiny-128x128x17-20steps" in result.stdout
    lines = result.stdout.splitlines()
    cond = next(line for line in lines if line.strip().startswith("cond "))
    schedule, count = cond.split()[1:3]
    assert set(schedule) == {"C", "."} and len(schedule) == 10
    assert count == f"{schedule.count('C')}/10"
    assert "speedup" in result.stdout and "fidelity vs uncached (same seed): PSNR" in result.stdout
    assert out.exists()


def test_cli_refuses_bad_cache_parameters_before_any_work(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.mp4"
    result = cli(
        home, "generate", "--prompt", "x", "--cache", "magcache", "--cache-param", "max_skip_steps=0", "--out", str(out)
    )
    assert result.returncode == 2
    assert "error: cache: Value error, magcache: params.max_skip_steps: Input should be greater than or equal to 1" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_lists_profiles(cli, home: Path) -> None:
    result = cli(home, "profiles")
    assert result.returncode == 0
    assert "wan2.1-t2v-1.3b: Wan2.1-T2V-1.3B 832x480x81, 50 steps [magcache, teacache]" in result.stdout
