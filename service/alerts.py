"""Polyp alerts with hysteresis: what an endoscopist is shown, per stream and per track.

A detection that flickers for a frame is not worth a box on the monitor; one missed frame
should not blink a box off. So a track *alerts* once it has been seen in `min_seen` of its
last `window` frames, and keeps alerting until it has gone unseen for more than `hold`
frames; while held, its last box is still reported (`held`). Each change is an event (start,
end) with the track id. `AlertRule(1, 1, 0)` is raw per-frame reporting: every detection
alerts at once and stops with the first frame it is missed.

Pure and per stream: no clock (frames are the unit; at 25 fps a frame is 40 ms), no threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .config import ConfigError, check_alert_rule
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


RAW = AlertRule(1, 1, 0)  # per-frame reporting: no persistence, no hold


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
    seen: deque[bool]
    last: Polyp
    unseen: int = 0
    alerting: bool = False


@dataclass
class Alerts:
    """The alert state of one stream's tracks."""

    rule: AlertRule = field(default_factory=AlertRule)
    _tracks: dict[int, _Track] = field(default_factory=dict)

    def update(self, polyps: Sequence[Polyp]) -> AlertFrame:
        """Advance one frame with its tracked polyps (track ids from the stream's tracker)."""
        rule = self.rule
        found = {p.track_id: p for p in polyps}
        for track_id, polyp in found.items():
            if track_id not in self._tracks:
                self._tracks[track_id] = _Track(deque(maxlen=rule.window), polyp)
        events = []
        for track_id in sorted(self._tracks):
            track = self._tracks[track_id]
            detected = found.get(track_id)
            track.seen.append(detected is not None)
            if detected is not None:
                track.last, track.unseen = detected, 0
            else:
                track.unseen += 1
            if not track.alerting and detected is not None and sum(track.seen) >= rule.min_seen:
                track.alerting = True
                events.append(AlertEvent(track_id, "start"))
            elif track.alerting and track.unseen > rule.hold:
                track.alerting = False
                events.append(AlertEvent(track_id, "end"))
            if not track.alerting and track.unseen >= rule.window:
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

    def close(self) -> tuple[AlertEvent, ...]:
        """End every alert (the stream ended)."""
        ended = tuple(AlertEvent(track_id, "end") for track_id, t in sorted(self._tracks.items()) if t.alerting)
        self._tracks.clear()
        return ended
