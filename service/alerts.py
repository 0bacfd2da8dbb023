"""Polyp alerts with hysteresis: what an endoscopist is shown, per stream and per track.

A detection that flickers for a frame is not worth a box on the monitor; one missed frame
should not blink a box off. So a track *alerts* once it has been seen in `min_seen` of its
last `window` frames, and keeps alerting until it has gone unseen for more than `hold`
frames; while held, its last box is still reported (`held`). Each change is an event (start,
end) with the track id. `AlertRule(1, 1, 0)` is raw per-frame reporting: every detection
alerts at once and stops with the first frame it is missed.

Rules are counted in frames of RULE_FPS video (25 fps: a frame is 40 ms), the rate they were
chosen at; a stream that declares its frame rate gets the rule `at_rate` that keeps its times
(4 of 4 held 4 is 7 of 7 held 8 at 50 fps). Frames are counted by their index in the stream,
so the frames the model does not look at (skipped, dropped late) are time passing, not nothing
(`Alerts.update`). Pure and per stream: no clock, no threads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .config import MAX_ALERT_WINDOW, ConfigError, check_alert_rule
from .frames import AlertEvent, Polyp


@dataclass(frozen=True)
class AlertRule:
    min_seen: int = 2  # frames a track must be seen in...
    window: int = 2  # ...of its last this many, to start alerting (these: for a model without a rule of its own)
    hold: int = 4  # unseen frames an alert outlasts (its last box is reported meanwhile)

    def __post_init__(self) -> None:
        check_alert_rule(self.min_seen, self.window, self.hold)

    def __str__(self) -> str:
        return f"{self.min_seen} of {self.window} frames, held {self.hold}"

    def counted(self) -> str:
        """The rule with the rate its frames are counted at, as serve's first line says it."""
        return f"{self}, at {RULE_FPS:g} fps"

    def at_rate(self, fps: float | None) -> AlertRule:
        """This rule (counted in frames of RULE_FPS video) for a stream of `fps` frames a second,
        keeping its times: the sightings it needs and its window span (N−1) and (M−1) frame
        intervals, its hold H intervals; each in whole frames at the stream's rate, rounded up so
        that no part is shorter than chosen (a persistence rounded away lets every flicker alert:
        benchmarks/README.md, "Alerts at other frame rates"), at most 64. A stream of unknown rate
        (None) gets the rule as it is; raw reporting stays raw at any rate.
        Raises ConfigError for a rate that is not a number of frames a second."""
        if fps is None:
            return self
        check_frame_rate(fps)
        scale = fps / RULE_FPS

        def frames(intervals: int) -> int:
            return min(math.ceil(intervals * scale - 1e-9), MAX_ALERT_WINDOW)  # 25 × (7 / 25) is 7.000000000000001

        return AlertRule(
            min(1 + frames(self.min_seen - 1), MAX_ALERT_WINDOW),
            min(1 + frames(self.window - 1), MAX_ALERT_WINDOW),
            frames(self.hold),
        )


RAW = AlertRule(1, 1, 0)  # per-frame reporting: no persistence, no hold
# The frame rate rules are counted at: the stand-in corpus's, on which they are chosen, and
# HyperKvasir's (347 of its 373 videos; the rest 30 and 20 fps).
RULE_FPS = 25.0
MAX_FRAME_RATE = 1000.0


def check_frame_rate(fps: float) -> None:
    """A stream's declared frame rate: more than 0 and at most 1,000 frames a second."""
    if not (math.isfinite(fps) and 0 < fps <= MAX_FRAME_RATE):
        raise ConfigError(f"frame rate must be more than 0 and at most {MAX_FRAME_RATE:g} frames a second, got {fps:g}")


def rule_for(
    base: AlertRule | None, min_seen: int | None, window: int | None, hold: int | None, *, whose: str = "the model"
) -> AlertRule:
    """The rule applied: each part as set (a flag, its environment variable, a frame's options),
    else `base`'s (the model's own `polypstream.alert_rule`, or the server's rule for a frame),
    else AlertRule()'s. Raises ConfigError, naming the rule the unset parts came from (`whose`),
    when the parts set do not fit it."""
    rule = base or AlertRule()
    parts = (
        rule.min_seen if min_seen is None else min_seen,
        rule.window if window is None else window,
        rule.hold if hold is None else hold,
    )
    try:
        return AlertRule(*parts)
    except ConfigError as exc:
        if None not in (min_seen, window, hold):
            raise
        raise ConfigError(f"{exc}; the parts not set are {whose if base else 'the default'}'s, {rule}") from exc


@dataclass(frozen=True)
class AlertFrame:
    """One frame's alert state: its polyps (each with `alerting` set), the alerting tracks not
    seen in it (their last box, `alerting` true), and the alerts that started or ended."""

    polyps: tuple[Polyp, ...]
    held: tuple[Polyp, ...]
    events: tuple[AlertEvent, ...]

    @property
    def shown(self) -> tuple[Polyp, ...]:
        """What a monitor shows: the alerting polyps of the frame and the held ones."""
        return tuple(p for p in self.polyps if p.alerting) + self.held


@dataclass
class _Track:
    seen: deque[bool]  # per frame of the stream, newest last (frames not looked at: see `update`)
    last: Polyp
    last_seen: int  # the index of the frame it was last seen in
    alerting: bool = False


@dataclass
class Alerts:
    """The alert state of one stream's tracks."""

    rule: AlertRule = field(default_factory=AlertRule)
    _tracks: dict[int, _Track] = field(default_factory=dict)
    _index: int | None = None  # the last frame looked at

    def update(self, polyps: Sequence[Polyp], index: int | None = None) -> AlertFrame:
        """Advance to the frame `index` of the stream with its tracked polyps (track ids from
        the stream's tracker); without an index, to the frame after the last one.

        The frames between the last one looked at and this one (a client skipped them, the
        server dropped them late or a live source had no room for them) count as time passing:
        a track's hold is counted in frames of the stream, not in frames looked at, so a box is
        held no longer when frames go unseen; toward the sightings a track needs, the frames of a
        gap count as sightings where the track was seen on both sides of it (the tracker found
        it there before and after), else as misses. So a rule keeps its times when only every
        other frame is looked at, as `AlertRule.at_rate` keeps them at half the frame rate
        (benchmarks/README.md, "Alerts when frames go unseen"). An index not after the last
        one counts as the next frame."""
        rule = self.rule
        previous = self._index
        if index is None or (previous is not None and index <= previous):
            index = 0 if previous is None else previous + 1
        gap = 0 if previous is None else index - previous - 1
        self._index = index
        found = {p.track_id: p for p in polyps}
        for track_id, polyp in found.items():
            if track_id not in self._tracks:
                self._tracks[track_id] = _Track(deque(maxlen=rule.window), polyp, index)
        events = []
        for track_id in sorted(self._tracks):
            track = self._tracks[track_id]
            detected = found.get(track_id)
            if gap:
                bridged = detected is not None and track.last_seen == previous
                track.seen.extend([bridged] * min(gap, rule.window))
            track.seen.append(detected is not None)
            if detected is not None:
                track.last, track.last_seen = detected, index
            unseen = index - track.last_seen
            if not track.alerting and detected is not None and sum(track.seen) >= rule.min_seen:
                track.alerting = True
                events.append(AlertEvent(track_id, "start"))
            elif track.alerting and unseen > rule.hold:
                track.alerting = False
                events.append(AlertEvent(track_id, "end"))
            if not track.alerting and unseen >= rule.window:
                del self._tracks[track_id]  # nothing of it left in its window
        return AlertFrame(
            polyps=tuple(replace(p, alerting=self._tracks[p.track_id].alerting) for p in polyps),
            held=tuple(
                replace(t.last, alerting=True)
                for track_id, t in sorted(self._tracks.items())
                if t.alerting and track_id not in found
            ),
            events=tuple(events),
        )

    def showing(self, index: int | None = None) -> tuple[Polyp, ...]:
        """The alerting tracks at their last box, as held, without advancing a frame: what a
        frame the model did not look at (answered DROPPED_LATE) still shows; with the frame's
        index, only the alerts whose hold has not run out by then."""
        hold = self.rule.hold
        return tuple(
            replace(t.last, alerting=True)
            for _, t in sorted(self._tracks.items())
            if t.alerting and (index is None or index - t.last_seen <= hold)
        )

    def close(self) -> tuple[AlertEvent, ...]:
        """End every alert (the stream ended)."""
        ended = tuple(AlertEvent(track_id, "end") for track_id, t in sorted(self._tracks.items()) if t.alerting)
        self._tracks.clear()
        return ended
