"""Lambda as a price: constant, linear warm-up, or set by a controller that clears a compute budget.

The controller is dual ascent on the constraint ``share <= budget``: after each step,
``lambda <- max(0, lambda + eta * (share - budget))``. While the model buys more compute than allowed
the price rises; once it is under budget the price falls, so the model ends up buying just the compute
it is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "warmup", "controller")


@dataclass
class Price:
    schedule: str
    lam: float
    warmup_steps: int = 0
    budget: float | None = None
    eta: float = 0.0
    step: int = 0
    current: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        self.current = self._scheduled() if self.schedule != "controller" else self.lam

    def _scheduled(self) -> float:
        if self.schedule == "warmup" and self.warmup_steps > 0:
            return self.lam * min(1.0, self.step / self.warmup_steps)
        return self.lam

    def update(self, share: float | None) -> float:
        """Advance one step (after the optimizer step); returns the price for the next step."""
        self.step += 1
        if self.schedule == "controller":
            if share is None:
                raise ValueError("the controller needs a measured compute share")
            self.current = max(0.0, self.current + self.eta * (share - self.budget))
        else:
            self.current = self._scheduled()
        return self.current

    def state_dict(self) -> dict:
        return {"step": self.step, "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.current = state["step"], state["current"]
