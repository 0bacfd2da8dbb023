"""What the CLI calls a user's error (one line, exit 2) and what it does not hide."""

from __future__ import annotations

import argparse

import pytest

from polypstream import cli
from polypstream.config import ConfigError, EngineConfig


def test_a_setting_out_of_range_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="max_batch must be at least 1, got 0"):
        EngineConfig(max_batch=0)
    assert cli.main(["demo", "--out", "unused", "--max-batch", "0"]) == 2
    assert capsys.readouterr().err == "polypstream demo: error: max_batch must be at least 1, got 0\n"
    assert cli.main(["demo", "--out", "unused", "--gil-switch-ms", "0"]) == 2
    assert capsys.readouterr().err == "polypstream demo: error: gil_switch_ms must be above 0 and at most 1000, got 0\n"


def test_a_bug_is_not_reported_as_the_users_mistake(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "cmd_health", broken)  # build_parser binds the command it finds then
    with pytest.raises(ValueError, match="an internal bug"):  # a traceback and exit 1, not "error: …" and exit 2
        cli.main(["health"])


def test_every_engine_and_limit_setting_has_a_flag_and_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ["serve", "--decode-workers", "3", "--min-area-fraction", "0.01", "--inflight-per-stream", "4",
             "--max-message-mb", "8", "--max-pixels", "1000000", "--gil-switch-ms", "2"]  # fmt: skip
    args = cli.build_parser().parse_args(flags)
    engine, server = cli.engine_config(args), cli.server_settings(args)
    assert (engine.decode_workers, engine.min_area_fraction, engine.gil_switch_ms) == (3, 0.01, 2.0)
    assert (server.inflight_per_stream, server.max_message_bytes, server.max_pixels) == (4, 8 * 1024 * 1024, 1_000_000)
    for name, value in (("DECODE_WORKERS", "5"), ("MIN_AREA_FRACTION", "0.02"), ("INFLIGHT_PER_STREAM", "6"),
                        ("MAX_MESSAGE_MB", "2"), ("MAX_PIXELS", "4096"), ("GIL_SWITCH_MS", "1")):  # fmt: skip
        monkeypatch.setenv(f"POLYPSTREAM_{name}", value)
    args = cli.build_parser().parse_args(["serve"])
    engine, server = cli.engine_config(args), cli.server_settings(args)
    assert (engine.decode_workers, engine.min_area_fraction, engine.gil_switch_ms) == (5, 0.02, 1.0)
    assert (server.inflight_per_stream, server.max_message_bytes, server.max_pixels) == (6, 2 * 1024 * 1024, 4096)
