"""Lambda as a price: constant, linear warm-up, or set by a controller that clears a compute budget.

The controller is dual ascent on the constraint ``share <= budget``: after each step,
``lambda <- max(0, lambda + eta * (share - budget))``. The budget can be annealed from 1 to its value over
the first steps (as pruning methods anneal their sparsity target), so the model adapts as it sheds units. While the model buys more compute than allowed
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
    target_warmup_steps: int = 0  # the budget falls linearly from 1 to its value over these steps
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

    def target(self) -> float | None:
        """The budget in force at this step (annealed from 1 when ``target_warmup_steps`` is set)."""
        if self.budget is None:
            return None
        if self.target_warmup_steps <= 0:
            return self.budget
        progress = min(1.0, self.step / self.target_warmup_steps)
        return 1.0 - (1.0 - self.budget) * progress

    def update(self, share: float | None) -> float:
        """Advance one step (after the optimizer step); returns the price for the next step."""
        if self.schedule == "controller":
            if share is None:
                raise ValueError("the controller needs a measured compute share")
            # the share was measured against the budget in force during this step
            self.current = max(0.0, self.current + self.eta * (share - self.target()))
            self.step += 1
        else:
            self.step += 1
            self.current = self._scheduled()
        return self.current

    def state_dict(self) -> dict:
        return {"step": self.step, "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.current = state["step"], state["current"]
