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
UNDERSHOOT = 0.05  # a final share further than this below the budget gave up compute the budget allowed


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


def clearing(
    budget: float,
    share_history: list,
    total_steps: int,
    budget_warmup: float,
    gate_freeze: float | None,
    tolerance: float = 0.01,
    window: int = 50,
    undershoot: float = UNDERSHOOT,
) -> dict | None:
    """Did the controller clear its budget before the gates froze, and if not, why?

    ``share_history`` is ``[step, share]`` records of the compute share each step paid for. The gates learn
    until the freeze (the last record at or before it is ``share_at_freeze``; without a freeze, the last
    record), then hold their structure, whose share is the last record's (``share_final``): cleared means that
    is at most ``budget + tolerance``, and undershot that it is more than ``undershoot`` below the budget (the
    price wound up while the gates had not yet answered, and they kept shutting units the budget allowed). The
    share still
    ``falling_per_100_steps`` over the ``window`` steps before the freeze says the price had not caught up
    with the gates yet: the dual ascent is an integral controller, so the share lags the budget in force, and
    the steps between the budget's full value and the freeze are all it has to catch up. The budget reaches
    its value after ``budget_warmup`` of ``total_steps`` and the gates freeze after ``gate_freeze`` of them (the
    run's settings, as training applies them; None when nothing froze). Returns None without records."""
    budget_step = int(budget_warmup * total_steps)
    freeze_step = None if gate_freeze is None else int(gate_freeze * total_steps)
    records = sorted((int(s), float(v)) for s, v in share_history)
    if not records:
        return None
    end = records[-1][0] if freeze_step is None else freeze_step
    before = [r for r in records if r[0] <= end] or records[:1]
    at_freeze_step, at_freeze = before[-1]
    earlier = [r for r in before if r[0] <= at_freeze_step - window]
    falling = None
    if earlier:
        start_step, start = earlier[-1]
        falling = (start - at_freeze) / (at_freeze_step - start_step) * 100
    in_force = next((v for s, v in records if s >= budget_step), records[-1][1])
    final = records[-1][1]  # after the freeze, the share of the structure the gates hold (deterministic)
    return {
        "budget": budget,
        "share_at_freeze": at_freeze,
        "share_final": final,
        "freeze_step": at_freeze_step,
        "budget_step": budget_step,
        "share_when_budget_in_force": in_force,
        "steps_to_catch_up": at_freeze_step - budget_step,
        "falling_per_100_steps": falling,
        "cleared": final <= budget + tolerance,
        "undershot": final < budget - undershoot,
    }


def clearing_advice(report: dict) -> str | None:
    """One line for a user whose price missed the budget (above it, or far below), or None when it landed."""
    if report is None:
        return None
    if report.get("undershot"):
        return (
            f"the share undershot the budget: {report['share_final']:.3f} against {report['budget']:g}, so the "
            "model gave up compute it was allowed; the price wound up before the gates answered, and a larger "
            "--budget-rho pulls the share back up to the budget (on STS-B at budget 0.5, rho 20 ended at 0.357, "
            "rho 1000 at 0.489)"
        )
    if report["cleared"]:
        return None
    falling = report["falling_per_100_steps"]
    still = f", still falling {falling:.3f} per 100 steps" if falling is not None and falling > 0.001 else ""
    return (
        f"the price did not clear the budget: the compute share is {report['share_final']:.3f} against "
        f"{report['budget']:g}; the gates froze at step {report['freeze_step']} at {report['share_at_freeze']:.3f}{still}, "
        f"{report['steps_to_catch_up']} steps after the budget reached its value; leave the price more steps "
        "to catch up (a smaller --budget-warmup, a later --gate-freeze, a larger --price-lr, or more --epochs)"
    )
