"""--fit-to-minutes (pipeline/training/schedule.py): the fitted length, the held lr, the relaunch that keeps the fit.

Unit: `fitted_steps` is the largest length whose steps and evaluations fit (checked against brute force),
`WarmupCosine(hold=h)` stays at the warmup's first factor for h steps and is the plain schedule shifted by h after.
End to end (1-process CPU run): a 6-second budget with an upper bound of 100,000 steps fits a schedule far below the
bound, written to config.json and metrics.jsonl; the lr holds at lr x 0.1 until the fit and then warms up; a
relaunch with the same flags finishes the fitted length instead of fitting again or running to the bound.
"""

from __future__ import annotations

import json

import pytest

from pipeline.training import schedule as schedule_fit
from pipeline.training.metrics import read_metrics
from pipeline.training.schedule import ScheduleFit, WarmupCosine, evaluations, fitted_steps
from tests.pipeline.conftest import run_train, train_cmd


@pytest.mark.parametrize("every", [0, 7, 20])
@pytest.mark.parametrize(("step", "upper", "left"), [(10, 500, 100.0), (10, 60, 100.0), (3, 500, 0.5), (0, 40, 37.0)])
def test_fitted_steps_is_the_largest_length_that_fits(every, step, upper, left):
    s_per_step, eval_s = 0.9, 4.0

    def cost(t):
        n = sum(1 for u in range(step + 1, t + 1) if u % every == 0) + (1 if t % every else 0) if every else 0
        assert n == evaluations(step, t, every)
        return (t - step) * s_per_step + n * eval_s

    fits = [t for t in range(step + 1, upper + 1) if cost(t) <= left]
    expected = max(fits) if fits else step + 1  # never below one more step
    assert fitted_steps(step, upper, left, s_per_step, every, eval_s) == expected


def test_hold_keeps_the_start_factor_then_shifts_the_schedule():
    plain, held = WarmupCosine(100, 0.1, 0.1, 0.0), WarmupCosine(120, 0.1, 0.1, 0.0, hold=20)
    assert [held(s) for s in range(21)] == [0.1] * 21  # continuous at the fit: step `hold` is the warmup's start
    assert all(held(s + 20) == pytest.approx(plain(s)) for s in range(101))
    assert WarmupCosine(100, 0.1, 0.1, 0.0, hold=0)(37) == plain(37)


def _lrs(run):
    return {r["step"]: r["lr"] for r in read_metrics(run)}


def test_the_refit_from_later_steps_ends_the_run_at_its_budget(monkeypatch):
    """Steps 4-10 slower than the rest (1.0 s against 0.8 s), evaluations every 50 steps costing 3 s against the
    first fit's estimate of 6 s: the first fit alone stops ~20% of the budget early; the refit from the steps since
    then ends the simulated run within a step and an evaluation of the budget less its reserve."""
    clock = [0.0]
    monkeypatch.setattr(schedule_fit.time, "time", lambda: clock[0])
    budget, every, step, fit = 600.0, 50, 0, ScheduleFit(10, 0)
    xsim_tokens = 6.0 / schedule_fit.XSIM_COST * 100 / 1.0  # the estimate: 6 s per evaluation at 1.0 s/step
    fitted = []
    while not fitted or step < fitted[-1]["max_steps"]:
        step += 1
        clock[0] += 1.0 if step <= 10 else 0.8
        clock[0] += 3.0 if step % every == 0 else 0.0  # the in-run evaluation, before the fit looks at the step
        if fit.observe(step, 200):  # 200 global tokens a step on 2 ranks: 100 per rank
            kw = dict(upper=100_000, budget_s=budget, spent_s=clock[0], world=2, xsim_every=every)
            fitted.append(fit.decide(step=step, applied=step, xsim_tokens=int(xsim_tokens), **kw))
    first, refit = fitted
    assert (first["fitted_at_step"], first["s_per_step"], first["xsim_s_estimate"]) == (10, 1.0, 6.0)
    timed = round(schedule_fit.REFIT_FRACTION * (first["max_steps"] - 10))
    assert (refit["hold"], refit["first_fit"]["max_steps"], refit["timed_steps"]) == (10, first["max_steps"], timed)
    ran = (10 + timed) // every  # evaluations among the timed steps: real 3 s each, counted at the 6 s estimate
    assert refit["fitted_at_step"] == 10 + timed
    assert refit["s_per_step"] == pytest.approx((0.8 * timed + ran * (3.0 - 6.0)) / timed, abs=1e-4)
    assert refit["max_steps"] > 1.2 * first["max_steps"] and not fit.refit_pending
    end = clock[0] + (3.0 if step % every else 0.0)  # the final evaluation off the cadence
    assert budget - refit["reserve_s"] - 0.8 - 3.0 <= end <= budget - refit["reserve_s"]


def test_every_rank_sees_the_refit_due_at_the_same_step(monkeypatch):
    """Rank 0 decides, the other ranks only adopt the broadcast entry: both must come to the refit (a broadcast) at
    the same step and stop fitting together, or the ranks deadlock in the refit's collective."""
    clock = [0.0]
    monkeypatch.setattr(schedule_fit.time, "time", lambda: clock[0])
    rank0, rank1 = ScheduleFit(10, 0), ScheduleFit(10, 0)
    due = {0: [], 1: []}
    for step in range(1, 2000):
        clock[0] += 1.0
        now = [rank0.observe(step, 100), rank1.observe(step, 100)]
        assert now[0] == now[1], f"step {step}: rank 0 due {now[0]}, rank 1 due {now[1]}"
        if now[0]:
            entry = rank0.decide(step=step, applied=step, upper=10_000, budget_s=600.0, spent_s=clock[0], world=2)
            rank1.adopt(entry)
            due[0].append(step)
            assert rank0.refit_pending == rank1.refit_pending
            if not rank0.refit_pending:
                break
    assert len(due[0]) == 2 and due[0][1] > due[0][0] == 10  # the first fit, then exactly one refit


def test_fit_to_minutes_sizes_holds_and_survives_a_relaunch(prepared, tmp_path):
    run, lr = tmp_path / "fit", 1e-4
    flags = ["--max-steps", "100000", "--fit-to-minutes", "--fit-after", "6", "--save-every", "0"]
    run_train(train_cmd(prepared, run, *flags, "--max-minutes", "0.1", "--valid-every", "-1", "--lr", str(lr)))
    schedule = json.loads((run / "config.json").read_text())["resolved"]["schedule"]
    total = schedule["max_steps"]
    lrs, fits = _lrs(run), read_metrics(run, "schedule")  # the fit, and the refit when the run got that far
    assert (schedule["hold"], fits[0]["fitted_at_step"], schedule["upper_bound"]) == (6, 6, 100000)
    assert schedule["fitted_at_step"] == fits[-1]["fitted_at_step"]  # the record holds the last fit (6, or the refit's)
    assert 7 <= total < 100000 and schedule["s_per_step"] > 0
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == total
    assert fits[-1]["max_steps"] == total
    assert all(lrs[s] == pytest.approx(0.1 * lr) for s in range(1, 8))  # held (steps 1-6), then warmup's start
    reached = max(lrs)
    assert reached <= total and len(fits) in (1, 2) and fits[-1]["max_steps"] == total

    def expected(s):  # step s ran at factor(s - 1) of the schedule fitted last before it
        length = [f["max_steps"] for f in fits if f["fitted_at_step"] < s or f is fits[0]][-1]
        return lr * WarmupCosine(length, 0.3, 0.1, 0.0, hold=6)(s - 1)

    assert all(lrs[s] == pytest.approx(expected(s), rel=1e-6) for s in lrs)

    # The same flags with a larger budget: the fitted length stands (no second fit, no run to the upper bound).
    run_train(train_cmd(prepared, run, *flags, "--max-minutes", "5", "--valid-every", "-1", "--lr", str(lr)))
    lrs = _lrs(run)
    assert max(lrs) == total
    assert json.loads((run / "config.json").read_text())["resolved"]["schedule"]["max_steps"] == total
    assert len(read_metrics(run, "schedule")) == len(fits)


def test_schedule_object_holds_its_hold_and_length():
    """A Schedule is immutable; a fit entry makes a new one, with the fit's length or with the run's own."""
    import dataclasses

    from pipeline.config import OptimConfig
    from pipeline.training.schedule import Schedule

    optim = OptimConfig(lr=2e-4)
    plain = Schedule(100)
    assert plain.lr(optim, 0) == pytest.approx(2e-4 * optim.warmup_start_factor)
    entry = {"max_steps": 60, "hold": 10, "fitted_at_step": 10}
    fitted, held = Schedule.from_fit(entry), Schedule.from_fit(entry, length=100)
    assert (fitted.length, fitted.hold, fitted.fitted_length, fitted.fit) == (60, 10, True, entry)
    assert (held.length, held.hold, held.fitted_length) == (100, 10, False)
    factors = WarmupCosine(60, optim.warmup_fraction, optim.warmup_start_factor, optim.min_lr_ratio, hold=10)
    assert [fitted.lr(optim, s) for s in range(61)] == [2e-4 * factors(s) for s in range(61)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fitted.hold = 0
