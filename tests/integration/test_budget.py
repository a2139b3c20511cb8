"""--time-budget: the fit plans its steps from the measured speed, ends within the budget and
completes its learning-rate schedule (cifar_lit.training.budget). The planning is driven by a fake clock
(exact, whatever else runs on the machine); one real Lightning fit on tiny CIFAR checks the
wiring, with generous time bounds only."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cifar_lit.cli import parse_config
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.training import train
from cifar_lit.training.budget import BudgetSchedule, TimeBudget


def test_a_real_fit_completes_its_schedule_on_time(make_config):
    cfg = make_config(time_budget=5, max_epochs=None, lr_schedule="triangular", warmup=0.2, prediction_samples=0,
                      wandb_mode="disabled")
    ImageDataModule.from_config(cfg).setup("fit")  # the data and split, outside the fit's budget
    result = train.fit(cfg, cfg.out / "split.json")
    b = result.budget
    last = torch.load(result.last_checkpoint, weights_only=False, map_location="cpu")
    # It trained the steps it planned, validated and saved them, and the schedule ended there:
    # the learning rate after the last step is 0, not cut off mid-decay.
    (schedule,) = last["lr_schedulers"]
    assert last["global_step"] == b["steps"] == schedule["last_epoch"] and schedule["_last_lr"] == [0.0, 0.0]
    assert b["images_per_second"] == pytest.approx(16 / b["step_seconds"], rel=0.01)
    assert b["epochs"] == pytest.approx(b["steps"] / 10, abs=0.01)  # 160 images, batch 16
    assert result.epochs_completed == b["steps"] // 10  # whole epochs: a last one cut short is not counted
    assert "val_acc" in result.metrics and (cfg.out / "checkpoints" / "last.ckpt").is_file()
    assert 0.5 * 5 < result.fit_seconds < 2 * 5  # used the budget, and not much more (generous bounds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(step_s, budget=60.0, per_epoch=100, end_s=1.0, world_size=1, most=None):
    """TimeBudget driven through Lightning's hooks by a fake trainer and clock: each step takes
    ``step_s(step)`` seconds, each end of an epoch (and the fit's last validation) ``end_s``.
    Returns (steps trained, seconds the fit took, the callback)."""
    clock = FakeClock()
    tb = TimeBudget(budget, first_guess=4 * per_epoch, warmup=0.2, batch_size=256, clock=clock, most=most)
    planned_at = []  # the steps a plan was made at (each plan is one broadcast)

    def broadcast(value, src=0):
        planned_at.append(trainer.global_step)
        return value

    # The learning-rate schedule as Lightning runs it: a LambdaLR over the budget's schedule,
    # stepped after each optimizer step and before the callbacks' on_train_batch_end.
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, tb.schedule)
    trainer = SimpleNamespace(global_step=0, num_training_batches=per_epoch, num_val_batches=[5],
                              enable_validation=True, sanity_checking=True, world_size=world_size,
                              strategy=SimpleNamespace(broadcast=broadcast), should_stop=False,
                              lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    tb.scheduler = scheduler
    tb.planned_at = planned_at
    tb.setup(trainer, None, "fit")
    for i in range(2):  # the sanity check's two validation batches: the first one slower
        tb.on_validation_batch_start(trainer, None, None, i)
        clock.now += end_s / 5 * (3 if i == 0 else 1)
        tb.on_validation_batch_end(trainer, None, None, None, i)
    trainer.sanity_checking = False
    tb.on_train_start(trainer, None)
    while not trainer.should_stop:
        clock.now += step_s(trainer.global_step)
        optimizer.step()
        trainer.global_step += 1
        scheduler.step()
        tb.on_train_batch_end(trainer, None, None, None, trainer.global_step % per_epoch)
        if trainer.global_step % per_epoch == 0 and not trainer.should_stop:
            clock.now += end_s
            tb.on_train_epoch_end(trainer, None)
        assert trainer.global_step < 100_000
    clock.now += end_s  # the last validation and checkpoint
    return trainer.global_step, clock.now, tb


@pytest.mark.parametrize("budget", [30.0, 120.0, 600.0])
def test_the_fit_ends_within_the_budget_and_uses_it(budget):
    steps, took, tb = simulate(lambda step: 0.1, budget=budget)
    assert 0.97 * budget <= took <= budget, took
    assert tb.schedule(steps) == 0.0 and tb.schedule.total == steps  # the schedule ends at the last step
    assert tb.report()["images_per_second"] == pytest.approx(2560)


def test_a_slower_machine_plans_fewer_steps():
    fast, _, fast_tb = simulate(lambda step: 0.1)
    slow, took, slow_tb = simulate(lambda step: 0.25)
    assert slow_tb.first_plan < 0.5 * fast_tb.first_plan and slow < 0.5 * fast
    assert 0.97 * 60 <= took <= 60


def test_a_machine_that_slows_down_replans_and_still_ends_on_time():
    steps, took, tb = simulate(lambda step: 0.1 if step < 200 else 0.2)
    assert tb.replans >= 1 and steps < 0.8 * tb.first_plan
    assert 0.97 * 60 <= took <= 60
    faster, took, tb = simulate(lambda step: 0.2 if step < 100 else 0.1)  # and one that speeds up
    assert faster > 1.2 * tb.first_plan and 0.97 * 60 <= took <= 60


def test_a_slowdown_near_the_end_is_caught_at_once():
    # 4x slower for the last seconds: planned at every step near the end, not every 25th.
    steps, took, tb = simulate(lambda step: 0.1 if step < 480 else 0.4)
    assert took <= 60 and steps < tb.first_plan and tb.schedule(steps) == 0.0


@pytest.mark.parametrize("step_s", [lambda k: 0.1, lambda k: 0.1 if k < 200 else 0.2, lambda k: 0.1 if k < 480 else 0.4],
                         ids=["steady", "slower", "slower-near-the-end"])
def test_the_learning_rate_left_after_the_last_step_is_the_final_plans(step_s):
    # Lightning steps the scheduler before on_train_batch_end: a plan that ends the schedule at
    # the step just taken must set the rate again, or the checkpoint records the earlier plan's.
    steps, _, tb = simulate(step_s)
    assert tb.scheduler.last_epoch == steps and tb.scheduler.get_last_lr() == [0.0]


def test_steps_too_slow_to_calibrate_still_end_on_time():
    # Each step takes more than an eighth of the budget: planned from the first measured step.
    steps, took, tb = simulate(lambda step: 4.0, budget=30.0)
    assert 0.75 * 30 <= took <= 30 and tb.schedule(steps) == 0.0


def test_several_processes_plan_on_the_same_steps():
    # DDP: a plan is a broadcast, so every process must make it on the same step: on the fixed
    # cadence only, never on a timing of its own; still on time.
    steps, took, tb = simulate(lambda step: 0.1, world_size=2)
    assert tb.every == 25 and all(step % 25 == 0 for step in tb.planned_at) and len(tb.planned_at) > 10
    assert 0.95 * 60 <= took <= 60
    _, _, alone = simulate(lambda step: 0.1)
    assert any(step % 25 for step in alone.planned_at)  # one process also plans in between


def test_the_decay_restarts_from_the_current_rate_when_the_total_changes():
    s = BudgetSchedule(total=100, warmup=0.1)
    before = [s(k) for k in range(51)]
    s.replan(step=50, total=80)  # the machine slowed down: a shorter decay from here
    after = [s(k) for k in range(50, 81)]
    assert after[0] == pytest.approx(before[50]) and after[-1] == 0.0
    assert all(a > b for a, b in zip(after, after[1:]))  # still decaying, no jump
    s.replan(step=60, total=200)  # faster again: a longer one
    assert s(60) == pytest.approx(after[10]) and s(200) == 0.0 and s(130) == pytest.approx(s(60) / 2)


def test_steps_that_fit_leave_time_for_the_ends_of_epochs():
    b = TimeBudget(60, first_guess=10)
    assert b.steps_that_fit(step=0, per_epoch=100, left=10.0, step_s=0.1, end_s=0.0) == 100
    # Each end of an epoch costs 1 s: 1 s for the last one, 1 s for each one the steps pass.
    assert b.steps_that_fit(step=0, per_epoch=100, left=10.0, step_s=0.1, end_s=1.0) == 90
    assert b.steps_that_fit(step=0, per_epoch=30, left=10.0, step_s=0.1, end_s=1.0) == 70  # 2 ends passed
    assert b.steps_that_fit(step=0, per_epoch=30, left=0.5, step_s=0.1, end_s=1.0) == 0


def test_durations_and_auto_parse_and_anything_else_is_a_one_line_error(capsys):
    assert parse_config(["--time-budget", "1h30m"]).time_budget == 5400
    assert parse_config(["--time-budget", "auto"]).time_budget == "auto"
    with pytest.raises(SystemExit) as e:
        parse_config(["--time-budget", "3 minutes"], prog="train_flow.py")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("train_flow.py: error: --time-budget: ") and "auto" in err, err


def test_with_an_epoch_count_the_budget_plans_no_more_than_those_epochs():
    # 0.1 s a step, 60 s: about 500 steps fit. A cap of 3 epochs (300 steps) ends the fit there,
    # with the schedule completed on its last step; a cap the time cannot reach changes nothing.
    steps, took, tb = simulate(lambda k: 0.1, budget=60.0, most=300)
    assert steps == tb.schedule.total == 300 and tb.schedule(steps) == 0.0 and took < 40
    assert tb.report()["ended_by"] == "epochs" and tb.report()["max_steps"] == 300
    free, _, _ = simulate(lambda k: 0.1, budget=60.0)
    steps, took, tb = simulate(lambda k: 0.1, budget=60.0, most=10_000)
    assert steps == free < 10_000 and took <= 60.0 and tb.report()["ended_by"] == "time"


def test_a_real_fit_with_a_budget_and_an_epoch_count_stops_at_the_epochs(make_config):
    cfg = make_config(time_budget=120, max_epochs=2, lr_schedule="triangular", warmup=0.2, prediction_samples=0,
                      wandb_mode="disabled")
    ImageDataModule.from_config(cfg).setup("fit")
    result = train.fit(cfg, cfg.out / "split.json")
    last = torch.load(result.last_checkpoint, weights_only=False, map_location="cpu")
    (schedule,) = last["lr_schedulers"]
    # 160 images in batches of 16: 10 steps an epoch, 20 in all, the schedule at 0 after the last.
    assert last["global_step"] == result.budget["steps"] == result.budget["max_steps"] == 20
    assert schedule["_last_lr"] == [0.0, 0.0] and result.epochs_completed == 2
    assert result.budget["ended_by"] == "epochs" and result.fit_seconds < 60  # did not wait out the budget


def test_the_summary_says_what_the_budget_chose():
    from cifar_lit.config import TrainConfig
    from cifar_lit.run.summary import build_summary, summary_markdown

    chose = {"seconds": 180.0, "steps": 1400, "epochs": 8.0, "first_plan_steps": 1380, "replans": 3,
             "step_seconds": 0.36, "images_per_second": 711.1, "epoch_end_seconds": 0.2}
    fit = {"metrics": {}, "epochs_completed": 8, "fit_seconds": 179.0, "best_checkpoint": "b", "last_checkpoint": "l",
           "budget": chose}
    test = {"metrics": {"test_acc": 0.85}, "per_class": []}
    probed = {"precision": "32-true", "channels_last": True, "threads": 2, "seconds": 2.2, "cached": False,
              "images_per_second": {"32-true, contiguous, 2 threads": 864.0, "32-true, channels_last, 2 threads": 1100.2}}
    fit["probe"] = probed
    summary = build_summary(TrainConfig(recipe="cpu-fast", time_budget="3m"), fit, test, "fp", {"mode": "disabled"})
    assert summary["budget"] == chose and summary["config"]["time_budget"] == 180.0 and summary["probe"] == probed
    shown = summary_markdown(summary)
    assert "**Time budget**: 180 s: 1400 steps (8.0 epochs) at 711 images/s measured" in shown
    assert "**Machine**: 32-true, channels_last, 2 threads (timed on this machine in 2.2 s)" in shown


def test_the_ui_summary_says_what_auto_and_a_short_budget_chose():
    from cifar_lit.config import TrainConfig
    from cifar_lit.recipes.plan import DataSize, plan, recipe_summary
    from cifar_lit.recipes.presets import Hardware
    from cifar_lit.run.summary import build_summary, summary_markdown

    cpu = Hardware(gpu=False)
    fit = {"metrics": {}, "epochs_completed": 3, "fit_seconds": 177.0, "best_checkpoint": "b", "last_checkpoint": "l",
           "budget": {"seconds": 180.0, "max_steps": 2496, "ended_by": "time", "steps": 542, "epochs": 3.47,
                      "images_per_second": 743.0, "replans": 22}}
    test = {"metrics": {"test_acc": 0.84}, "per_class": []}
    for user, line in (
        (TrainConfig(), "**Recipe**: cpu-fast; time budget: 180 s (auto, on a CPU), at most 16 epochs"),
        (TrainConfig(time_budget="30s"), "**Recipe**: cpu-fast; a short time budget (30 s): batch_size 256 -> 64"),
    ):
        p = plan(plan(user, cpu).config, cpu, DataSize(40_000))
        shown = summary_markdown(build_summary(p.config, fit, test, "fp", {"mode": "disabled"}, recipe=recipe_summary(p)))
        assert line in shown, shown
    assert "**Time budget**: 180 s, at most 2496 steps: 542 steps (3.47 epochs) at 743 images/s" in shown


class Crash(Callback):
    """The process dies as the second epoch starts: one epoch is checkpointed."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")


def test_a_resumed_fit_spends_what_is_left_of_the_budget(make_config, monkeypatch):
    cfg = make_config(time_budget=8, max_epochs=None, lr_schedule="triangular", warmup=0.2, prediction_samples=0,
                      wandb_mode="disabled")
    ImageDataModule.from_config(cfg).setup("fit")
    build = train.build_callbacks
    monkeypatch.setattr(train, "build_callbacks", lambda *a, **k: [*build(*a, **k), Crash()])
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="killed"):
        train.fit(cfg, cfg.out / "split.json")
    first = time.monotonic() - t0
    saved = torch.load(cfg.out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("TimeBudget")]
    assert 0 < state["spent"] <= first  # the budget used up to the checkpoint
    monkeypatch.setattr(train, "build_callbacks", build)
    resumed = train.fit(cfg, cfg.out / "split.json", resume=True)
    last = torch.load(resumed.last_checkpoint, weights_only=False, map_location="cpu")
    # Only what was left: the two attempts together keep (generously) to the budget, and the
    # schedule, restored from the checkpoint, still ends at 0 on the last step.
    assert resumed.fit_seconds < 8 - state["spent"] + 2
    assert last["global_step"] == resumed.budget["steps"] > 10 and last["lr_schedulers"][0]["_last_lr"] == [0.0, 0.0]


@pytest.mark.usefixtures("prefect_api")
def test_a_budgeted_runs_config_json_replays_it_step_for_step(make_config, tmp_path, monkeypatch):
    """The run writes what it decided (precision, memory format, the budget's plan) into
    config.json; --config runs exactly that: the same steps and the same held-out accuracy, with
    no clock involved. The replay is slowed on purpose: a budget timed again would plan fewer
    steps, the plan does not."""
    import json

    from cifar_lit.cli import parse_config
    from cifar_lit.training.callbacks import EpochHookCallback
    from flows.train_flow import train_flow

    cfg = make_config(time_budget=2, max_epochs=None, lr_schedule="triangular", warmup=0.2, prediction_samples=0,
                      wandb_mode="disabled", output_dir=tmp_path / "first")
    first = train_flow(cfg)
    written = json.loads((tmp_path / "first" / "config.json").read_text())
    plans = first["budget"]["plans"]
    assert written["budget_plan"] == plans and plans[0][0] == 0 and len(plans) >= 2  # planned from the clock
    assert written["precision"] is not None and written["channels_last"] is not None  # as trained, not null
    assert written["threads"] == torch.get_num_threads()
    assert written["batch_size"] is not None and written["time_budget"] == 2
    assert first["config"]["precision"] == written["precision"]  # the summary records what ran too

    replay = parse_config(["--config", str(tmp_path / "first" / "config.json"), "--output-dir", str(tmp_path / "again")])
    assert replay.budget_plan == [tuple(p) for p in plans] and replay.output_dir == tmp_path / "again"

    def slow(self, trainer, pl_module, *args):  # every step 50 ms slower than the first run's
        time.sleep(0.05)

    monkeypatch.setattr(EpochHookCallback, "on_train_batch_end", slow, raising=False)
    again = train_flow(replay)
    assert again["budget"]["replayed"] and again["budget"]["steps"] == first["budget"]["steps"] == plans[-1][1]
    assert again["test_acc"] == first["test_acc"] and again["test_loss"] == pytest.approx(first["test_loss"], abs=1e-6)
