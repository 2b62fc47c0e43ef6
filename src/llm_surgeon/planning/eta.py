"""Where a prune stands as a whole: shot k of T, the time spent, and an estimate of the time left.

Each stage has its own progress bar; these lines put them in the run's frame. Before the first shot the
estimate is ``plan``'s (the shot's FLOPs at this machine's measured throughput); from then on it is the
measured mean shot, which corrects the plan by what this machine actually did. A resumed run counts the
time its earlier runs spent (kept in the checkpoints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 10 s``, ``1 h 05 min``: as precise as a person reads an estimate."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class RunClock:
    """The run's shots and their times; says where the run stands in one line."""

    shots: int
    predicted_shot_seconds: float | None = None
    """The plan's seconds per shot (None: no estimate before a shot is measured)."""
    earlier_seconds: float = 0.0
    """Wall seconds spent by earlier runs of a resumed job."""
    started: float = field(default_factory=time.perf_counter)
    measured: list[float] = field(default_factory=list)

    def elapsed(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started

    def left_seconds(self, done: int) -> float | None:
        """Seconds the remaining shots take at the measured mean (the plan's before any was measured)."""
        per_shot = sum(self.measured) / len(self.measured) if self.measured else self.predicted_shot_seconds
        return None if per_shot is None else per_shot * (self.shots - done)

    def opening_line(self, first_shot: int) -> str:
        """Said before the first shot of this run (``first_shot`` is 0-based; above 0 when resumed)."""
        line = f"llm-surgeon: {self.shots} shot{'s' if self.shots != 1 else ''}"
        if first_shot:
            line += f", resuming at shot {first_shot + 1} ({format_duration(self.earlier_seconds)} spent before)"
        left = self.left_seconds(first_shot)
        if left is not None:
            line += (f"; plan: about {format_duration(self.predicted_shot_seconds)} a shot, "
                     f"{format_duration(left)} to go")
        return line

    def shot_line(self, shot: int, seconds: float) -> str:
        """Said after shot ``shot`` (1-based) took ``seconds``; the estimate from the shots measured so far."""
        self.measured.append(seconds)
        line = (f"llm-surgeon: shot {shot}/{self.shots} done in {format_duration(seconds)}; "
                f"{format_duration(self.elapsed())} elapsed")
        if shot < self.shots:
            line += f", about {format_duration(self.left_seconds(shot) or 0.0)} left"
        return line
