"""What the CLI calls a user's error (one line, exit 2) and what it does not hide."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from polypstream import cli
from polypstream.config import ConfigError, EngineConfig


def test_a_setting_out_of_range_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="max_batch must be 1 to 1024, got 0"):
        EngineConfig(max_batch=0)
    assert EngineConfig(max_batch=1024).max_batch == 1024
    for wrong in ("0", "1025"):  # 100000 (a typo) used to end in onnxruntime's traceback, out of memory
        assert cli.main(["demo", "--out", "unused", "--max-batch", wrong]) == 2
        assert capsys.readouterr().err == f"polypstream demo: error: max_batch must be 1 to 1024, got {wrong}\n"
    assert cli.main(["demo", "--out", "unused", "--gil-switch-ms", "0"]) == 2
    assert capsys.readouterr().err == "polypstream demo: error: gil_switch_ms must be above 0 and at most 1000, got 0\n"


def test_a_stated_source_frame_rate_must_name_a_source_and_be_a_rate() -> None:
    named = {"scope": "rtsp://scope/live", "file": "clip.avi"}
    assert cli.parse_source_rates(["scope=50", "file=0"], named) == {"scope": 50.0, "file": 0.0}
    for specs, why in (
        (["scope"], "--source-frame-rate expects NAME=FPS, got 'scope'"),
        (["=50"], "--source-frame-rate expects NAME=FPS, got '=50'"),
        (["scop=50"], "--source-frame-rate scop=50: no --source is named 'scop'"),
        (["scope=50", "scope=25"], "--source-frame-rate: source 'scope' given twice"),
        (["scope=fast"], "--source-frame-rate scope=fast: not a number: 'fast'"),
        (
            ["scope=-5"],
            "--source-frame-rate scope=-5: frame rate must be more than 0 and at most 1000 frames a second, got -5",
        ),
    ):
        with pytest.raises(cli.CliError) as err:
            cli.parse_source_rates(specs, named)
        assert str(err.value) == why


def test_a_negative_wait_for_the_server_or_the_source_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flag in ("--reconnect", "--source-reconnect"):
        assert cli.main(["stream", "rtsp://scope/live", "--jsonl", "unused.jsonl", flag, "-1"]) == 2
        assert capsys.readouterr().err == f"polypstream stream: error: {flag} must be 0 or more seconds, got -1\n"


def test_a_negative_number_of_decoding_threads_is_refused() -> None:
    for field in ("decode_workers", "offline_decode_workers"):
        with pytest.raises(ConfigError, match="must not be negative"):
            EngineConfig(**{field: -1})  # type: ignore[arg-type]


def test_a_bug_is_not_reported_as_the_users_mistake(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "cmd_health", broken)  # build_parser binds the command it finds then
    with pytest.raises(ValueError, match="an internal bug"):  # a traceback and exit 1, not "error: …" and exit 2
        cli.main(["health"])


def test_every_engine_and_limit_setting_has_a_flag_and_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ["serve", "--decode-workers", "3", "--min-area-fraction", "0.01", "--inflight-per-stream", "4",
             "--max-message-mb", "8", "--max-pixels", "1000000", "--gil-switch-ms", "2",
             "--offline-decode-workers", "7", "--max-watchers", "3"]  # fmt: skip
    args = cli.build_parser().parse_args(flags)
    engine, server = cli.engine_config(args), cli.server_settings(args)
    assert (engine.decode_workers, engine.min_area_fraction, engine.gil_switch_ms) == (3, 0.01, 2.0)
    assert engine.offline_decode_workers == 7
    assert (server.inflight_per_stream, server.max_message_bytes, server.max_pixels) == (4, 8 * 1024 * 1024, 1_000_000)
    assert server.max_watchers == 3
    for name, value in (("DECODE_WORKERS", "5"), ("MIN_AREA_FRACTION", "0.02"), ("INFLIGHT_PER_STREAM", "6"),
                        ("MAX_MESSAGE_MB", "2"), ("MAX_PIXELS", "4096"), ("GIL_SWITCH_MS", "1"),
                        ("OFFLINE_DECODE_WORKERS", "9"), ("MAX_WATCHERS", "11")):  # fmt: skip
        monkeypatch.setenv(f"POLYPSTREAM_{name}", value)
    args = cli.build_parser().parse_args(["serve"])
    engine, server = cli.engine_config(args), cli.server_settings(args)
    assert (engine.decode_workers, engine.min_area_fraction, engine.gil_switch_ms) == (5, 0.02, 1.0)
    assert engine.offline_decode_workers == 9
    assert (server.inflight_per_stream, server.max_message_bytes, server.max_pixels) == (6, 2 * 1024 * 1024, 4096)
    assert server.max_watchers == 11


def test_an_output_that_cannot_be_written_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the check comes before any work")

    for name in ("open_source", "build_pipeline", "replay", "write_corpus", "resolve_model"):
        monkeypatch.setattr(cli, name, no_work)
    video, f, folder = str(tmp_path / "clip.mp4"), str(a_file), str(tmp_path)
    not_a_folder = f"{f} is a file, not a folder"
    containers = "the overlay video is written as .mp4, .m4v, .mkv, .mov, .avi"
    cases = {
        ("demo", "--out", f"{f}/out"): f"--out {f}/out: {not_a_folder}",
        ("stream", video, "--jsonl", folder): f"--jsonl {folder}: is a folder; name a file",
        ("stream", video, "--jsonl", f"{f}/a/b.jsonl"): f"--jsonl {f}/a/b.jsonl: {not_a_folder}",
        ("stream", video, "--jsonl", "r.jsonl", "--overlay", f"{folder}/o.txt"):
            f"--overlay {folder}/o.txt: {containers}; not '.txt'",
        ("stream", video, "--jsonl", "r.jsonl", "--overlay", f"{folder}/o"):
            f"--overlay {folder}/o: {containers}; its name has no suffix",
        ("replay", folder, "--json", f"{f}/r.json"): f"--json {f}/r.json: {not_a_folder}",
        ("replay", folder, "--plot", f"{f}/r.png"): f"--plot {f}/r.png: {not_a_folder}",
        ("corpus", f"{f}/c", "--from", folder): f"{f}/c: {not_a_folder}",
        ("eval-video", video, "--sweep", "--plot", f"{f}/p.png"): f"--plot {f}/p.png: {not_a_folder}",
    }  # fmt: skip
    for argv, message in cases.items():
        assert cli.main(list(argv)) == 2, argv
        assert capsys.readouterr().err == f"polypstream {argv[0]}: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing made


def test_a_folder_that_does_not_exist_yet_is_fine_and_is_not_made_by_the_check(tmp_path: Path) -> None:
    cli.check_output("--json", tmp_path / "a" / "b" / "r.json")
    cli.check_output("--out", tmp_path / "new", folder=True)
    assert list(tmp_path.iterdir()) == []


def test_an_overlay_writer_that_does_not_open_stops_the_stream_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Closed:
        def __init__(self, *args: object) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
            return False

    monkeypatch.setattr(cli.cv2, "VideoWriter", type("VideoWriter", (Closed,), {"fourcc": staticmethod(lambda *c: 0)}))
    video = cli.OverlayVideo(tmp_path / "o.mp4", 25.0)
    with pytest.raises(cli.CliError, match=f"cannot write the overlay video {tmp_path}/o.mp4: OpenCV could not open"):
        video.write(b"", np.zeros((8, 8, 3), np.uint8))


def test_a_file_the_command_cannot_write_midway_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def disk_full(args: argparse.Namespace) -> int:
        raise OSError(28, "No space left on device", "out/results.jsonl")

    monkeypatch.setattr(cli, "cmd_health", disk_full)
    assert cli.main(["health"]) == 1
    assert capsys.readouterr().err == (
        "polypstream health: error: [Errno 28] No space left on device: 'out/results.jsonl'\n"
    )

    def closed_stdout(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_health", closed_stdout)
    with pytest.raises(BrokenPipeError):  # `| head`: left to __main__, which ends quietly
        cli.main(["health"])


def test_demo_takes_a_stream_url_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def opened(uri: str, realtime: bool) -> None:
        raise cli.CliError(f"opened {uri}")

    monkeypatch.setattr(cli, "open_source", opened)
    assert cli.main(["demo", "--out", str(tmp_path / "out"), "--source", "rtsp://scope.local:8554/live"]) == 2
    assert capsys.readouterr().err == "polypstream demo: error: opened rtsp://scope.local:8554/live\n"  # not rtsp:/
