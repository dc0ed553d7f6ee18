"""Steps under a wall-time budget: each step's time is predicted before it starts, a step whose
prediction would pass the budget is not started, and every step's status is recorded with the
reason it was not done (bench/paper_gpu.py, whose GPU session ends at a fixed time)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DONE = ("done", "kept")  # a step measured now, or before a resume


@dataclass
class Budget:
    seconds: float
    start: float  # time.perf_counter() where the budget began
    safety: float = 1.2  # predictions are stretched by this: a step that only just fits is not started
    margin: float = 0.0  # seconds kept free at the end (writing the outputs)
    steps: list[dict] = field(default_factory=list)  # every step's record, in order
    skipped: list[dict] = field(default_factory=list)  # those not done, with their reasons

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, predicted: float, reserve: float = 0.0) -> bool:
        """Whether a step predicted to take ``predicted`` s ends in time, ``reserve`` s kept after it."""
        return self.elapsed() + self.safety * predicted + reserve + self.margin <= self.seconds

    def reason(self, what: str, predicted: float, reserve: float = 0.0, reserved_for: str = "") -> str:
        kept = f", {reserve:.1f} s kept for {reserved_for}" if reserve else ""
        used = f"{self.elapsed():.1f} of {self.seconds:.0f} s used{kept}"
        return f"{what}: predicted {predicted:.1f} s (x{self.safety} margin) would pass the budget ({used})"

    def record(self, step: str, status: str, **info: object) -> dict:
        """Add a step's record ("done", "kept", "partial", "skipped", with ``info``: its reason, seconds...)."""
        entry = {"step": step, "status": status, "at_s": round(self.elapsed(), 2), **info}
        self.steps.append(entry)
        if status not in DONE:
            self.skipped.append({"step": step, "status": status, "reason": info.get("reason", "")})
        return entry
