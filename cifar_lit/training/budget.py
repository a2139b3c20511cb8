"""Time budgets: ``--time-budget 3m`` ends the fit within three minutes with its learning-rate
schedule completed.

Lightning's ``max_time`` stops a fit mid-schedule: the learning rate is still high when time runs
out, and the last epochs' work is wasted. Here the schedule's length (its total steps) follows the
clock instead. The first steps of the real model on the real data measure the time per step (the
calibration costs nothing extra: those steps train); the total is then set to what fits the time
left, and set again every few steps, so a machine that slows down (another job starts) or speeds up
gets a shorter or longer schedule. An end of an epoch costs more than a step (validation, the
checkpoint, the loader starting again): that cost is measured too, first from the sanity check's
validation batches, then at each end of an epoch, and kept out of the time the steps may take.
The fit stops at the planned step, with a final validation and checkpoint. With an epoch count
too (``--max-epochs``, or ``--time-budget auto``'s cap), the plan never goes past it: on a fast
machine or small data the fit ends there, sooner than the budget.

When the total changes after the warm-up, the decay starts again from the learning rate of that
step and reaches 0 at the new total: the rate never jumps (``BudgetSchedule``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import LambdaLR

from cifar_lit.training.optim import triangular


class BudgetSchedule:
    """The learning-rate factor of each step (``LambdaLR``'s function) for a total that may
    change while training.

    Triangular (``cifar_lit.training.optim.triangular``: a warm-up, then a linear decay to 0 at
    ``total``) until the first change after the warm-up; from then on a linear decay from the
    factor reached at the step of the latest change to 0 at the new total. ``constant``: 1 at
    every step (only the length follows the budget).

    >>> s = BudgetSchedule(total=10, warmup=0.2)
    >>> [round(s(k), 2) for k in (0, 2, 6)]
    [0.2, 1.0, 0.5]
    >>> s.replan(step=6, total=16)   # more time than planned: a longer decay from 0.5
    >>> [round(s(k), 2) for k in (6, 11, 16)]
    [0.5, 0.25, 0.0]

    A plain object whose ``__dict__`` is its state: ``LambdaLR.state_dict`` saves it in the
    checkpoint, so a resumed fit continues the same schedule.
    """

    def __init__(self, total: int, warmup: float, constant: bool = False) -> None:
        self.total = max(1, int(total))
        self.warmup = warmup
        self.constant = constant
        self.anchor: tuple[int, float] | None = None  # (step, factor) of the latest change
        # Every total it had, as (from step, total): what a replay follows (ReplayedBudget).
        self.plans: list[tuple[int, int]] = [(0, self.total)]

    def peak(self) -> int:
        return max(1, round(self.warmup * self.total))

    def __call__(self, step: int) -> float:
        if self.constant:
            return 1.0
        if self.anchor is None:
            return triangular(step, self.total, self.warmup)
        s0, f0 = self.anchor
        return max(0.0, f0 * (self.total - step) / max(1, self.total - s0))

    def replan(self, step: int, total: int) -> None:
        """From ``step`` on, the schedule ends at ``total``; ``total`` at or before ``step``: out
        of time, it ends at ``step`` (the fit stops there)."""
        total = max(int(total), step)
        if total == self.total:
            return
        if not self.constant and (self.anchor is not None or step >= self.peak()):
            self.anchor = (step, self(step))
        self.total = total
        # setdefault: a schedule restored from a checkpoint of an older version has no plans.
        self.__dict__.setdefault("plans", []).append((step, total))


class TimeBudget(Callback):
    """Plans the fit's total steps to end within ``seconds`` of wall time (see the module
    docstring); ``report()`` says what it chose.

    ``first_guess``: the total until the first steps are measured (the recipe's epochs).
    ``warmup``/``constant``: the learning-rate schedule (``BudgetSchedule``); the module's
    ``configure_optimizers`` takes it from this callback. ``spent``: seconds of the budget
    already used (the machine probe's; after a resume, restored from the checkpoint). ``most``:
    the most steps to plan (``--max-epochs`` with a budget), however much time is left.
    """

    CALIBRATION_STEPS = 5  # planned at every step until this many are measured; "first_plan" after
    WINDOW = 50  # steps whose mean time plans the rest: recent enough to follow a slowdown
    # Kept free at the end for what follows the last step and was not measured (the fit's own
    # teardown): 1% of the budget.
    RESERVE = 0.01

    def __init__(self, seconds: float, first_guess: int, warmup: float = 0.0, constant: bool = False,
                 batch_size: int | None = None, spent: float = 0.0, most: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = float(seconds)
        self.most = most
        self.clock = clock  # seconds, monotonic (a test drives its own)
        self.schedule = BudgetSchedule(first_guess, warmup, constant)
        self.batch_size = batch_size
        self.spent = spent
        self.start: float | None = None
        self.steps: deque[float] = deque(maxlen=self.WINDOW)
        self.seen = 0  # steps ended in this attempt
        self.last_end: float | None = None
        self.crossed = False  # an epoch ended (validation, checkpoint) since the last step
        self.epoch_end: list[float] = []  # measured seconds of each end of an epoch
        self.val_batch: float | None = None  # seconds per validation batch, from the sanity check
        self.sanity_start: float | None = None
        self.first_plan: int | None = None
        self.replans = 0
        self.every = 1

    @staticmethod
    def of(trainer) -> TimeBudget | None:
        """The trainer's time budget, if it has one."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, TimeBudget)), None)

    # ---- the clock ------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.start = self.clock()

    def left(self) -> float:
        """Seconds of the budget left now."""
        return self.seconds - self.spent - (self.clock() - self.start)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking:
            self.sanity_start = self.clock()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # The sanity check's fastest batch: the first one also pays for starting up.
        if trainer.sanity_checking and self.sanity_start is not None:
            took = self.clock() - self.sanity_start
            self.val_batch = took if self.val_batch is None else min(self.val_batch, took)

    def on_train_start(self, trainer, pl_module) -> None:
        # Plan a few times an epoch, on the same steps in every process (DDP: the plan is
        # broadcast from rank 0 there, so every process stops at the same step).
        self.every = max(1, min(25, trainer.num_training_batches // 4))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.crossed = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        if self.last_end is not None:
            gap = now - self.last_end
            if self.crossed and self.steps:  # a step plus the end of an epoch
                self.epoch_end.append(max(0.0, gap - self.step_seconds()))
            elif not self.crossed and self.seen > 1:  # not the first two steps: they also warm up
                self.steps.append(gap)
        self.crossed = False
        self.last_end = now
        self.seen += 1
        step = trainer.global_step
        if self.steps and self._plan_now(trainer, step):
            self._plan(trainer, step)
        if step >= self.schedule.total:
            trainer.should_stop = True
            self._final_rate(trainer, step)

    def _final_rate(self, trainer, step: int) -> None:
        """Lightning steps the scheduler before ``on_train_batch_end``, so the rate it set after
        this step came from the plan before this one. When this plan ended the schedule here,
        the scheduler steps once more, from this step: the rate left (and saved in the
        checkpoint) is the final plan's, 0 at the end of a decay."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, LambdaLR) and scheduler.last_epoch == step:
                scheduler.last_epoch -= 1
                scheduler.step()

    def _plan_now(self, trainer, step: int) -> bool:
        """Every ``every`` steps; with one process also at every step while calibrating (a slow
        network must not run past its budget before the first plan) and near the end (a
        slowdown there is caught at once). Several processes (DDP) plan on the cadence only:
        each plan is a collective (a broadcast) that all of them must reach on the same step."""
        if step % self.every == 0:
            return True
        if trainer.world_size > 1:
            return False
        return len(self.steps) < self.CALIBRATION_STEPS or self.left() < 2 * self.every * self.step_seconds()

    # ---- the plan -------------------------------------------------------------------------

    def step_seconds(self) -> float:
        return sum(self.steps) / len(self.steps)

    def end_seconds(self, trainer) -> float:
        """The cost of one end of an epoch: measured, else estimated from the validation batches."""
        if self.epoch_end:
            return max(self.epoch_end[-3:])  # the dearest of the latest: the end of the fit saves more
        val_batches = sum(trainer.num_val_batches) if trainer.enable_validation else 0
        return (self.val_batch or 0.0) * val_batches

    def steps_that_fit(self, step: int, per_epoch: int, left: float, step_s: float, end_s: float) -> int:
        """How many more steps fit in ``left`` seconds: each costs ``step_s``; each end of an
        epoch they pass, and the fit's own end, ``end_s``.

        >>> TimeBudget(60, 10).steps_that_fit(step=0, per_epoch=100, left=31.0, step_s=0.1, end_s=1.0)
        280
        """
        n = max(0, math.floor((left - end_s) / step_s + 1e-9))
        for _ in range(4):  # the number of epoch ends depends on n: settle it
            # Ends after steps step .. step+n-1 (one after ``step`` itself may still be to come:
            # the plan is made at the end of a step, before its epoch's end); the end after the
            # last step is the fit's own.
            ends = (step + n - 1) // per_epoch - (max(step, 1) - 1) // per_epoch if n else 0
            n = max(0, math.floor((left - end_s * (1 + ends)) / step_s + 1e-9))
        return n

    def _plan(self, trainer, step: int) -> None:
        left = self.left() - self.RESERVE * self.seconds
        more = self.steps_that_fit(step, max(1, trainer.num_training_batches), left, self.step_seconds(),
                                   self.end_seconds(trainer))
        total = trainer.strategy.broadcast(min(step + more, self.most or step + more), src=0)
        if self.first_plan is not None and total != self.schedule.total:
            self.replans += 1
        self.schedule.replan(step, total)
        if self.first_plan is None and len(self.steps) >= self.CALIBRATION_STEPS:
            self.first_plan = self.schedule.total  # the plan once calibrated, for the report

    def planned_epochs(self, trainer) -> int:
        """The epochs the current plan takes (the last one may be partial)."""
        return math.ceil(self.schedule.total / max(1, trainer.num_training_batches))

    def report(self, trainer=None) -> dict[str, Any]:
        """What the budget chose, for the summary: steps, epochs, measured speed."""
        steps = trainer.global_step if trainer is not None else self.schedule.total
        per_epoch = max(1, trainer.num_training_batches) if trainer is not None else None
        step_s = self.step_seconds() if self.steps else None
        return {
            "seconds": self.seconds,
            "max_steps": self.most,
            # What ended the fit: the time, or the epoch cap (--max-epochs; --time-budget auto's).
            "ended_by": "epochs" if self.most is not None and steps >= self.most else "time",
            "steps": steps,
            "epochs": round(steps / per_epoch, 2) if per_epoch else None,
            "first_plan_steps": self.first_plan,
            "replans": self.replans,
            "step_seconds": round(step_s, 4) if step_s else None,
            "images_per_second": round(self.batch_size / step_s, 1) if step_s and self.batch_size else None,
            "epoch_end_seconds": round(sum(self.epoch_end) / len(self.epoch_end), 3) if self.epoch_end else None,
            "plans": [list(p) for p in self.schedule.__dict__.get("plans", [])],  # what a replay follows
        }

    # ---- resume ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.seconds - self.left(), "first_plan": self.first_plan, "replans": self.replans}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent = float(state.get("spent", 0.0))
        self.first_plan = state.get("first_plan")
        self.replans = int(state.get("replans", 0))


class ReplayedBudget(TimeBudget):
    """A time budget's recorded plan, replayed without a clock: the schedule starts at the first
    total and changes to each recorded total at the step it changed then (``plans``: (step,
    total) pairs, as ``BudgetSchedule.plans`` recorded them), and the fit stops at the last one.
    The same steps and the same learning rate at each, so on the same machine the same model:
    what ``config.json``'s ``budget_plan`` replays (a budget timed again would plan anew)."""

    def __init__(self, plans: list[tuple[int, int]], warmup: float = 0.0, constant: bool = False,
                 batch_size: int | None = None, seconds: float = 0.0) -> None:
        (first_step, first_total), *changes = [(int(s), int(t)) for s, t in plans]
        super().__init__(seconds or float("inf"), first_total, warmup=warmup, constant=constant, batch_size=batch_size)
        self.changes = changes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        for at, total in self.changes:
            if at == step:
                self.schedule.replan(step, total)
        if step >= self.schedule.total:
            trainer.should_stop = True
            self._final_rate(trainer, step)

    def left(self) -> float:
        return float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {}  # the plan is in the config; the schedule's own state is in the checkpoint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def report(self, trainer=None) -> dict[str, Any]:
        steps = trainer.global_step if trainer is not None else self.schedule.total
        per_epoch = max(1, trainer.num_training_batches) if trainer is not None else None
        return {"seconds": self.seconds, "replayed": True, "steps": steps,
                "epochs": round(steps / per_epoch, 2) if per_epoch else None, "plans": self.schedule.plans}

