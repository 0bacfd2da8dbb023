"""The alert state machine on hand-made track sequences."""

from __future__ import annotations

import pytest

from polypstream.alerts import RAW, AlertEvent, AlertFrame, AlertRule, Alerts
from polypstream.frames import Polyp


def seen(*track_ids: int) -> list[Polyp]:
    return [Polyp(box=(10 * t, 0, 10, 10), score=0.9, area=100, track_id=t) for t in track_ids]


Step = tuple[list[int], list[int], list[tuple[int, str]]]  # alerting track ids, held ones, events


def step(frame: AlertFrame) -> Step:
    """A frame's (alerting track ids of the frame, held track ids, events)."""
    return (
        [p.track_id for p in frame.polyps if p.alerting],
        [p.track_id for p in frame.held],
        [(e.track_id, e.kind) for e in frame.events],
    )


def run(rule: AlertRule, frames: list[list[Polyp]]) -> list[Step]:
    """Per frame, one after another: its step."""
    alerts = Alerts(rule)
    return [step(alerts.update(polyps)) for polyps in frames]


def test_a_track_alerts_once_seen_in_enough_of_its_recent_frames() -> None:
    steps = run(AlertRule(3, 5, 0), [seen(1), seen(1), [], seen(1), seen(1)])
    assert steps == [([], [], []), ([], [], []), ([], [], []), ([1], [], [(1, "start")]), ([1], [], [])]


def test_a_one_frame_flicker_never_alerts() -> None:
    steps = run(AlertRule(2, 3, 1), [seen(1), [], [], [], seen(2), [], []])
    assert all(alerting == [] and events == [] for alerting, _, events in steps)


def test_one_missed_frame_holds_the_alert_and_its_last_box() -> None:
    alerts = Alerts(AlertRule(1, 1, 2))
    assert [e.kind for e in alerts.update(seen(1)).events] == ["start"]
    dropout = alerts.update([])
    assert [(p.track_id, p.box, p.alerting) for p in dropout.held] == [(1, (10, 0, 10, 10), True)]
    assert dropout.events == () and dropout.shown == dropout.held
    back = alerts.update(seen(1))
    assert back.events == () and [p.alerting for p in back.polyps] == [True] and back.held == ()


def test_what_an_unseen_frame_shows_is_every_alert_on_at_its_last_box_and_nothing_advances() -> None:
    alerts = Alerts(AlertRule(2, 2, 2))
    assert alerts.showing() == ()
    alerts.update(seen(1, 2))
    assert alerts.showing() == ()  # seen once: confirming, not alerting
    alerts.update([Polyp(box=(15, 5, 10, 10), score=0.8, area=90, track_id=1), *seen(2)])
    alerts.update(seen(2))  # 1 unseen for one frame: held
    for _ in range(3):  # frames nobody looked at: the same, and no step towards the end of 1's hold
        shown = [(p.track_id, p.box, p.alerting) for p in alerts.showing()]
        assert shown == [(1, (15, 5, 10, 10), True), (2, (20, 0, 10, 10), True)]
    still = alerts.update(seen(2))  # 1 unseen for two frames: its hold (2) not yet outlasted
    assert still.events == () and [p.track_id for p in still.held] == [1]
    ended = alerts.update(seen(2))
    assert [(e.track_id, e.kind) for e in ended.events] == [(1, "end")]
    assert [p.track_id for p in alerts.showing()] == [2]


def test_an_alert_ends_when_its_track_is_unseen_longer_than_the_hold() -> None:
    steps = run(AlertRule(1, 1, 2), [seen(1), [], [], [], []])
    assert [events for _, _, events in steps] == [[(1, "start")], [], [], [(1, "end")], []]
    assert [held for _, held, _ in steps] == [[], [1], [1], [], []]


def test_a_track_that_comes_back_after_its_alert_ended_must_earn_it_again() -> None:
    steps = run(AlertRule(2, 2, 0), [seen(1), seen(1), [], seen(1), seen(1)])
    assert [events for _, _, events in steps] == [[], [(1, "start")], [(1, "end")], [], [(1, "start")]]


def test_a_track_back_after_a_short_gap_alerts_again_once_its_window_holds_enough_sightings() -> None:
    # 2 of its last 4 frames, no hold: the gap ends the alert, and the next sighting makes 3 of
    # the last 4, which is enough (at least N, not exactly N: mutation testing found this unpinned).
    steps = run(AlertRule(2, 4, 0), [seen(1), seen(1), [], seen(1), seen(1)])
    assert [events for _, _, events in steps] == [[], [(1, "start")], [(1, "end")], [(1, "start")], []]
    assert [alerting for alerting, _, _ in steps] == [[], [1], [], [1], [1]]


def test_a_rule_is_a_value_that_no_stream_can_change() -> None:
    # One rule object is every stream's default on a server (Pipeline.default_alert_rule).
    import dataclasses

    rule = AlertRule(4, 4, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.hold = 0  # type: ignore[misc]
    assert hash(rule) == hash(AlertRule(4, 4, 3)) and {rule: 1}[AlertRule(4, 4, 3)] == 1
    frame = Alerts(rule).update(seen(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.held = ()  # type: ignore[misc]


def test_two_polyps_alert_and_end_on_their_own() -> None:
    steps = run(AlertRule(2, 3, 1), [seen(1), seen(1, 2), seen(1, 2), seen(2), seen(2), []])
    assert [events for _, _, events in steps] == [
        [], [(1, "start")], [(2, "start")], [], [(1, "end")], [],
    ]  # fmt: skip
    assert [alerting for alerting, _, _ in steps] == [[], [1], [1, 2], [2], [2], []]
    assert [held for _, held, _ in steps] == [[], [], [], [1], [], [2]]


def test_raw_reporting_alerts_every_detection_and_drops_it_with_the_first_miss() -> None:
    steps = run(RAW, [seen(1), [], seen(1)])
    assert steps == [([1], [], [(1, "start")]), ([], [], [(1, "end")]), ([1], [], [(1, "start")])]


def test_closing_a_stream_ends_its_alerts() -> None:
    alerts = Alerts(AlertRule(1, 1, 5))
    alerts.update(seen(3, 1))
    alerts.update(seen(2))
    assert alerts.close() == (AlertEvent(1, "end"), AlertEvent(2, "end"), AlertEvent(3, "end"))
    assert alerts.close() == ()


@pytest.mark.parametrize(("min_seen", "window", "hold"), [(0, 1, 0), (3, 2, 0), (1, 65, 0), (1, 1, -1), (1, 1, 65)])
def test_impossible_rules_are_refused(min_seen: int, window: int, hold: int) -> None:
    with pytest.raises(ValueError, match="alert rule"):
        AlertRule(min_seen, window, hold)


def test_a_rule_takes_each_part_set_else_the_models_else_the_default() -> None:
    from polypstream.alerts import rule_for

    model = AlertRule(4, 4, 3)
    assert rule_for(model, None, None, None) == model
    assert rule_for(model, None, None, 0) == AlertRule(4, 4, 0)  # --alert-hold 0 alone
    assert rule_for(model, 1, 1, 0) == RAW
    assert rule_for(None, None, None, None) == AlertRule(2, 2, 4)  # a model without a rule of its own
    assert rule_for(None, 3, 3, None) == AlertRule(3, 3, 4)


def test_a_part_that_does_not_fit_the_models_rule_is_refused_naming_it() -> None:
    from polypstream.alerts import rule_for
    from polypstream.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        rule_for(AlertRule(4, 4, 3), None, 2, None)
    assert str(raised.value) == (
        "alert rule: need 1 <= min_seen (4) <= window (2) <= 64; "
        "the parts not set are the model's, 4 of 4 frames, held 3"
    )
    with pytest.raises(ConfigError) as raised:
        rule_for(None, 3, None, None)
    assert str(raised.value).endswith("; the parts not set are the default's, 2 of 2 frames, held 4")
    with pytest.raises(ConfigError) as raised:
        rule_for(AlertRule(4, 4, 3), 5, 2, 1)  # all set: the model's rule plays no part
    assert str(raised.value) == "alert rule: need 1 <= min_seen (5) <= window (2) <= 64"


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ((None, 0, None), "alert rule: need 1 <= min_seen (the model's) <= window (0) <= 64"),
        ((0, None, None), "alert rule: need 1 <= min_seen (0) <= window (the model's) <= 64"),
        ((65, None, None), "alert rule: need 1 <= min_seen (65) <= window (the model's) <= 64"),
        ((None, 65, None), "alert rule: need 1 <= min_seen (the model's) <= window (65) <= 64"),
        ((3, 2, None), "alert rule: need 1 <= min_seen (3) <= window (2) <= 64"),
        ((None, None, 65), "alert rule: hold must be 0..64 frames, got 65"),
        ((None, None, -1), "alert rule: hold must be 0..64 frames, got -1"),
    ],
)
def test_the_parts_of_a_rule_set_before_the_model_is_known_are_checked_alone(
    parts: tuple[int | None, int | None, int | None], error: str
) -> None:
    # serve checks its flags before loading the model: what can be wrong without it is refused then.
    from polypstream.config import ConfigError, EngineConfig, check_alert_rule

    with pytest.raises(ConfigError) as raised:
        check_alert_rule(*parts)
    assert str(raised.value) == error
    with pytest.raises(ConfigError):
        EngineConfig(alert_min_seen=parts[0], alert_window=parts[1], alert_hold=parts[2])


@pytest.mark.parametrize("parts", [(3, None, None), (None, 3, None), (None, None, 0), (None, None, None), (64, 64, 64)])
def test_parts_that_can_be_met_whatever_the_models_are_pass_the_early_check(
    parts: tuple[int | None, int | None, int | None],
) -> None:
    from polypstream.config import check_alert_rule

    check_alert_rule(*parts)


@pytest.mark.parametrize(
    ("fps", "fast", "accurate"),
    [
        # (N-1) and (M-1) frame intervals and H intervals of 40 ms, in whole frames of the stream's
        # rate, rounded up: no part shorter than at 25 fps
        (25.0, (2, 2, 4), (4, 4, 4)),  # the rate rules are counted at: unchanged
        (50.0, (3, 3, 8), (7, 7, 8)),
        (60.0, (4, 4, 10), (9, 9, 10)),  # 1 interval = 2.4 frames -> 3; 3 = 7.2 -> 8; hold 9.6 -> 10
        (30.0, (3, 3, 5), (5, 5, 5)),  # 1.2 -> 2; 3.6 -> 4; hold 4.8 -> 5
        (20.0, (2, 2, 4), (4, 4, 4)),  # 0.8 -> 1; 2.4 -> 3; hold 3.2 -> 4
        (10.0, (2, 2, 2), (3, 3, 2)),  # 0.4 -> 1: still two sightings; 1.2 -> 2; hold 1.6 -> 2
        (5.0, (2, 2, 1), (2, 2, 1)),  # 0.2 and 0.6 -> 1; hold 0.8 -> 1
        (12.5, (2, 2, 2), (3, 3, 2)),  # 0.5 -> 1; 1.5 -> 2; hold 2 exactly
    ],
)
def test_a_rule_keeps_its_times_at_a_streams_frame_rate(
    fps: float, fast: tuple[int, int, int], accurate: tuple[int, int, int]
) -> None:
    assert AlertRule(2, 2, 4).at_rate(fps) == AlertRule(*fast)
    assert AlertRule(4, 4, 4).at_rate(fps) == AlertRule(*accurate)


def test_a_rules_window_and_needed_sightings_scale_apart_and_stay_within_64_frames() -> None:
    assert AlertRule(3, 5, 2).at_rate(50.0) == AlertRule(5, 9, 4)
    assert AlertRule(3, 5, 2).at_rate(5.0) == AlertRule(2, 2, 1)
    assert AlertRule(26, 26, 25).at_rate(7.0) == AlertRule(8, 8, 7)  # 25 intervals: 7 frames exactly
    assert AlertRule(4, 4, 4).at_rate(1000.0) == AlertRule(64, 64, 64)  # 121 frames each, capped
    assert AlertRule(40, 64, 64).at_rate(30.0) == AlertRule(48, 64, 64)


def test_raw_reporting_stays_raw_and_an_unknown_rate_keeps_the_rule() -> None:
    assert RAW.at_rate(60.0) == RAW
    assert RAW.at_rate(1.0) == RAW
    assert AlertRule(4, 4, 4).at_rate(None) == AlertRule(4, 4, 4)


@pytest.mark.parametrize("fps", [0.0, -25.0, 1000.5, float("nan"), float("inf")])
def test_a_frame_rate_that_is_not_one_is_refused(fps: float) -> None:
    from polypstream.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        AlertRule().at_rate(fps)
    assert str(raised.value) == f"frame rate must be more than 0 and at most 1000 frames a second, got {fps:g}"


def run_at(rule: AlertRule, frames: dict[int, list[Polyp]]) -> dict[int, Step]:
    """Frames looked at, by their index in the stream (the others were skipped or dropped)."""
    alerts = Alerts(rule)
    return {index: step(alerts.update(polyps, index)) for index, polyps in frames.items()}


def test_frames_not_looked_at_count_toward_the_hold() -> None:
    # Held 2: seen in frame 0, unseen in 2 (held: 2 frames) and 3 (3 frames: ended), where
    # counting only the frames looked at would hold it to frame 4 and end it at 5.
    steps = run_at(AlertRule(1, 1, 2), {0: seen(1), 2: [], 3: []})
    assert steps == {0: ([1], [], [(1, "start")]), 2: ([], [1], []), 3: ([], [], [(1, "end")])}
    assert run_at(AlertRule(1, 1, 2), {0: seen(1), 3: []})[3] == ([], [], [(1, "end")])


def test_a_gap_between_two_sightings_counts_as_sightings() -> None:
    # Every other frame looked at: 2 of 2 alerts on the second sighting (frames 1 and 2 seen,
    # the skipped 1 between two sightings), 4 of 4 on the third (frames 1 to 4), as at half the rate.
    assert [s[2] for s in run_at(AlertRule(2, 2, 4), {0: seen(1), 2: seen(1)}).values()] == [[], [(1, "start")]]
    steps = run_at(AlertRule(4, 4, 4), {0: seen(1), 2: seen(1), 4: seen(1)})
    assert [events for _, _, events in steps.values()] == [[], [], [(1, "start")]]
    # However long the gap: the tracker found the polyp on both sides of it.
    assert run_at(AlertRule(4, 4, 4), {0: seen(1), 30: seen(1)})[30] == ([1], [], [(1, "start")])


def test_a_gap_after_a_miss_or_before_one_counts_as_misses() -> None:
    # Missed in frame 1, seen again in 3: the skipped frame 2 is not a sighting (2 of 3 needs
    # 2 of frames 1 to 3: only 3); seen in 0 and missed in 2: frame 1 is no sighting either.
    assert run_at(AlertRule(2, 3, 0), {0: seen(1), 1: [], 3: seen(1)})[3] == ([], [], [])
    assert run_at(AlertRule(2, 3, 0), {0: seen(1), 2: [], 3: seen(1)})[3] == ([], [], [])
    assert run_at(AlertRule(2, 3, 0), {0: seen(1), 1: seen(1)})[1] == ([1], [], [(1, "start")])  # the control
    # A track new after a gap has nothing of the gap to count.
    assert run_at(AlertRule(2, 2, 0), {0: [], 5: seen(1)})[5] == ([], [], [])


def test_a_frame_dropped_late_shows_only_the_alerts_whose_hold_lasts_to_it() -> None:
    alerts = Alerts(AlertRule(1, 1, 2))
    alerts.update(seen(1), 10)
    alerts.update(seen(2), 11)
    assert [p.track_id for p in alerts.showing(12)] == [1, 2]  # 1 unseen 2 frames: held
    assert [p.track_id for p in alerts.showing(13)] == [2]  # 1 unseen 3 frames: over
    assert [p.track_id for p in alerts.showing(14)] == []
    assert [p.track_id for p in alerts.showing()] == [1, 2]  # no index: every alert on
    assert [e.kind for e in alerts.update([], 12).events] == []  # nothing advanced meanwhile


def test_an_index_not_after_the_last_counts_as_the_next_frame() -> None:
    alerts = Alerts(AlertRule(1, 1, 1))
    alerts.update(seen(1), 7)
    assert alerts.update([], 7).held != ()  # frame 8: unseen 1, held
    assert [e.kind for e in alerts.update([], 3).events] == ["end"]  # frame 9: unseen 2


def test_without_indexes_frames_follow_one_another() -> None:
    by_index = run_at(AlertRule(2, 3, 1), dict(enumerate([seen(1), [], seen(1), [], [], seen(1)])))
    assert list(by_index.values()) == run(AlertRule(2, 3, 1), [seen(1), [], seen(1), [], [], seen(1)])


def test_frames_far_into_a_stream_are_counted_as_near_its_start() -> None:
    # Indexes past 256 (ten seconds of video): a gap between two sightings still counts as sightings.
    steps = run_at(AlertRule(4, 4, 4), {10_000: seen(1), 10_002: seen(1), 10_004: seen(1), 10_010: []})
    assert [events for _, _, events in steps.values()] == [[], [], [(1, "start")], [(1, "end")]]


def test_a_long_stream_of_brief_detections_keeps_no_state_for_them() -> None:
    # Memory: a track that flickered once is forgotten once nothing of it is left in its window,
    # also when the frames in between were not looked at.
    alerts = Alerts(AlertRule(3, 3, 4))
    for i in range(0, 3000, 3):
        alerts.update(seen(i + 1), i)
    assert len(alerts._tracks) == 1  # only the newest
    alerts.update([], 3004)
    assert alerts._tracks == {}
