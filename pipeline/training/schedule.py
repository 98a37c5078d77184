"""The lr schedule: warmup + cosine, the AdamW parameter groups, the applied-steps rule, and its fit to a budget.

`WarmupCosine` is the lr factor at an applied (not skipped) optimizer step; `apply_optim_config` makes a loaded
optimizer and scheduler this config's, so the lr is a pure function of the config, the run record and the applied
steps.

`--fit-to-minutes`: size the lr schedule to the wall-clock budget from the speed this machine shows.

A step cap with a wall-clock cap makes the result depend on the machine: a slow machine stops mid-cosine, at a high
lr. With --fit-to-minutes the first --fit-after steps run at the warmup's first lr (WarmupCosine's `hold`) while
rank 0 times them (the first UNTIMED are start-up: allocation, first gloo buffers, DeepSpeed's first step); then

    max_steps = the largest T <= --max-steps with (T - step) x seconds/step + evaluations(T) x seconds/evaluation
                <= what is left of --max-minutes - a reserve for the final checkpoint,

broadcast to every rank, and the warmup + cosine runs over the T - hold steps that remain. Evaluations are the
--xsim-every (and --mine-every: the hooks are summed into one at the shortest cadence, `hooks.budget`) ones in
(step, T] plus the final one; their cost is estimated from the tokens they encode against the
tokens a step trains (XSIM_COST: about twice what the demo measured, for scoring and the `best` checkpoint
save). The estimate is written with the fit, and the first evaluation's real
seconds can be read beside it in metrics.jsonl. An overshoot is cheap: --max-minutes still stops the run, and the
last percent of a cosine runs at lr near its minimum.

The steps right after start-up run slower than the rest (measured on the demo: steps 4-10 at 0.86-0.89 s, the run at
~0.80 s), so a fit from them alone leaves ~10% of the budget unused. Once REFIT_FRACTION of the fitted schedule has
run (at least REFIT_MIN_STEPS), rank 0 fits once more from the steps since the first fit (their wall time less the
estimated cost of the evaluations among them: an error in that estimate cancels, as the remaining evaluations are
estimated alike) and the length moves to what the measured speed fits. The lr stays continuous up to the cosine's
small change of slope (a 10% longer schedule at 20% of it changes the lr by ~2%).

The fit (length, hold, measured seconds per step, estimates) is the run record's "schedule" entry: config.json
shows it, a relaunch with --fit-to-minutes continues the fitted length instead of fitting again, and the lr stays
a pure function of the record and the applied steps (`apply_optim_config`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from pipeline.config import TrainConfig


class WarmupCosine:
    """LR factor at scheduler step s: linear f0 -> 1 over W steps, then cosine 1 -> min over T - W steps.

    hold > 0 (--fit-to-minutes): the first `hold` steps stay at f0 while the speed is measured, then the same
    warmup + cosine runs over the remaining T - hold steps (W = round(fraction x (T - hold))), so the lr is
    continuous at the fit whatever length it chose."""

    def __init__(self, total_steps: int, warmup_fraction: float, start_factor: float, min_ratio: float, hold: int = 0):
        self.hold = hold
        self.total, self.warmup = total_steps - hold, round(warmup_fraction * (total_steps - hold))
        self.start, self.min = start_factor, min_ratio

    def __call__(self, s: int) -> float:
        s -= self.hold
        if s < 0:
            return self.start
        if s < self.warmup:
            return self.start + (1.0 - self.start) * s / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.min + (1.0 - self.min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as the original's configure_optimizers: decay only parameters of >= 2 dimensions (matrices,
    embeddings), never biases or LayerNorm weights; the empty group is left out. Order: decayed, then not."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) parameters appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def apply_optim_config(engine, cfg: TrainConfig, max_steps: int, applied_steps: int, hold: int = 0) -> None:
    """After a checkpoint load, make the optimizer and the LR schedule this config's: DeepSpeed restores the saved
    param groups (lr, betas, eps, weight decay) and LambdaLR.load_state_dict the old WarmupCosine's length and base
    lr. The lr is a pure function of the config and the applied (not skipped) steps: WarmupCosine(max_steps,
    hold)(applied) x --lr, whatever scheduler state the checkpoint held (hold: the run record's fitted schedule)."""
    o, sched = cfg.optim, engine.lr_scheduler
    sched.last_epoch = applied_steps  # LambdaLR's position = optimizer steps taken (skipped ones do not advance it)
    groups = sched.optimizer.param_groups
    decays = [g["weight_decay"] for g in param_groups(engine.module, o.weight_decay)]
    schedule = WarmupCosine(max_steps, o.warmup_fraction, o.warmup_start_factor, o.min_lr_ratio, hold)
    sched.lr_lambdas, sched.base_lrs = [schedule] * len(groups), [o.lr] * len(groups)
    for group, decay in zip(groups, decays, strict=True):
        lr = o.lr * schedule(sched.last_epoch)
        group.update(lr=lr, initial_lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=decay)
    sched._last_lr = [g["lr"] for g in groups]


@dataclass(frozen=True)
class Schedule:
    """The run's lr schedule: warmup + cosine to step `length`, after `hold` applied steps at the start factor.

    Immutable: a fit or a relaunch that adopts one makes a new Schedule. `fit` is the fitted entry (the run record's
    "schedule": length, hold and what they were computed from) once there is one; `fitted_length` says whether the
    run also takes the fit's length (--fit-to-minutes) or only its hold (a relaunch without the flag keeps
    --max-steps, which the relaunch rules judge)."""

    length: int
    hold: int = 0
    fit: dict | None = None
    fitted_length: bool = False

    @classmethod
    def from_fit(cls, entry: dict, length: int | None = None) -> Schedule:
        """The schedule of a fit entry: its hold, and its length unless `length` (the run's own) is given."""
        if length is None:
            return cls(entry["max_steps"], entry["hold"], entry, fitted_length=True)
        return cls(length, entry["hold"], entry)

    def factors(self, optim) -> WarmupCosine:
        """The lr factor per applied optimizer step (skipped steps do not count) for an OptimConfig."""
        o = optim
        return WarmupCosine(self.length, o.warmup_fraction, o.warmup_start_factor, o.min_lr_ratio, self.hold)

    def lr(self, optim, applied: int) -> float:
        return optim.lr * self.factors(optim)(applied)

    def apply(self, engine, cfg: TrainConfig, applied: int) -> None:
        """Set the engine's optimizer groups and LambdaLR to this schedule at `applied` steps (`apply_optim_config`)."""
        apply_optim_config(engine, cfg, self.length, applied, self.hold)


UNTIMED = 3  # steps of this launch not timed (start-up effects)
# Seconds of an evaluation per (token encoded x seconds per trained token). Measured 0.08 on the demo (2-layer tiny
# encoder, CLS-only last layer, 2-layer head + vocabulary projection in the step); a deep encoder, whose step is mostly
# encoder, sits nearer 0.25-0.3 (a forward is a third of forward + backward): the cap covers that overshoot.
XSIM_COST = 0.15
RESERVE_FRACTION, RESERVE_STEPS = 0.02, 3  # kept for the final checkpoint: max(2% of the budget, 3 steps)
REFIT_FRACTION, REFIT_MIN_STEPS = 0.2, 50  # the second fit: after this share of the first fitted length (and steps)


def evaluations(step: int, total: int, every: int) -> int:
    """In-run evaluations after `step` up to `total`: every `every` steps, plus the final one off the cadence."""
    if every <= 0:
        return 0
    return -(-total // every) - step // every  # ceil(total / every) - floor(step / every)


def fitted_steps(step: int, upper: int, left_s: float, s_per_step: float, every: int = 0, eval_s: float = 0.0) -> int:
    """The largest T in [step + 1, upper] whose remaining steps and evaluations fit in left_s (at least step + 1)."""

    def cost(t: int) -> float:
        return (t - step) * s_per_step + evaluations(step, t, every) * eval_s

    lo, hi = step + 1, max(step + 1, upper)
    if cost(hi) <= left_s:
        return hi
    while lo < hi:  # cost is non-decreasing in t
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= left_s else (lo, mid - 1)
    return lo


class ScheduleFit:
    """Times this launch's steps from UNTIMED on; `observe` says when --fit-after steps ran, then when the refit is
    due; `decide` (rank 0) -> the schedule entry (the first fit, then the refit), `adopt` (every rank) applies it."""

    def __init__(self, fit_after: int, launch_step: int):
        self.launch_step, self.due_step = launch_step, launch_step + fit_after
        self.t0: float | None = None
        self.tokens = 0  # global tokens of the timed steps: 0-d device tensors summed, read once in decide
        self.first: dict | None = None  # the first fit's entry (and self.t_fit its time): the refit corrects it

    @property
    def refit_pending(self) -> bool:
        """True between the first fit and the refit: the trainer keeps this object for it."""
        return self.first is not None and self.due_step != float("inf")

    def observe(self, step: int, tokens) -> bool:
        """After each optimizer step (its record's global token count) -> True when the fit is due."""
        if step == self.launch_step + UNTIMED:
            self.t0 = time.time()
        elif self.t0 is not None:
            self.tokens = self.tokens + tokens
        return step >= self.due_step

    def decide(self, *, step: int, applied: int, upper: int, budget_s: float, spent_s: float, world: int,
               xsim_every: int = 0, xsim_tokens: int = 0) -> dict:  # fmt: skip
        """The fitted schedule (rank 0): length, hold, and what it was computed from.

        xsim_tokens: tokens this rank encodes per evaluation (its share; the ranks' shares are balanced)."""
        if self.first is not None:
            return self._refit(step, budget_s, spent_s, xsim_every)
        timed = step - (self.launch_step + UNTIMED)
        s_per_step = (time.time() - self.t0) / timed
        rank_tokens_per_step = float(self.tokens) / timed / world
        eval_s = XSIM_COST * xsim_tokens / max(rank_tokens_per_step, 1.0) * s_per_step if xsim_every > 0 else 0.0
        reserve = max(RESERVE_FRACTION * budget_s, RESERVE_STEPS * s_per_step)
        left = budget_s - spent_s - reserve
        total = fitted_steps(step, upper, left, s_per_step, xsim_every, eval_s)
        self.t_fit = time.time()
        entry = {
            "max_steps": total,
            "hold": applied,
            "fitted_at_step": step,
            "upper_bound": upper,
            "s_per_step": round(s_per_step, 4),
            "timed_steps": timed,
            "budget_s": budget_s,
            "spent_s": round(spent_s, 1),
            "reserve_s": round(reserve, 1),
            "xsim_s_estimate": round(eval_s, 2),
            "xsim_evaluations": evaluations(step, total, xsim_every),
        }
        self.adopt(entry)
        return entry

    def adopt(self, entry: dict) -> None:
        """Every rank, with the entry rank 0 decided: the first fit sets the refit's step, the refit ends the fitting.
        The refit is a collective (a broadcast), so every rank must see it due at the same step."""
        if "first_fit" in entry:
            self.due_step = float("inf")
            return
        self.first, step = entry, entry["fitted_at_step"]
        self.due_step = step + max(REFIT_MIN_STEPS, round(REFIT_FRACTION * (entry["max_steps"] - step)))

    def _refit(self, step: int, budget_s: float, spent_s: float, xsim_every: int) -> dict:
        """The second fit: the speed of the steps since the first one; same hold, upper bound and estimates."""
        first = self.first
        timed = step - first["fitted_at_step"]
        ran = evaluations(first["fitted_at_step"], step, xsim_every) - (1 if xsim_every and step % xsim_every else 0)
        eval_s = first["xsim_s_estimate"]
        s_per_step = max((time.time() - self.t_fit - ran * eval_s) / timed, 1e-3 * first["s_per_step"])
        reserve = max(RESERVE_FRACTION * budget_s, RESERVE_STEPS * s_per_step)
        total = fitted_steps(step, first["upper_bound"], budget_s - spent_s - reserve, s_per_step, xsim_every, eval_s)
        entry = {
            **first,
            "max_steps": total,
            "fitted_at_step": step,
            "s_per_step": round(s_per_step, 4),
            "timed_steps": timed,
            "spent_s": round(spent_s, 1),
            "reserve_s": round(reserve, 1),
            "xsim_evaluations": evaluations(step, total, xsim_every),
            "first_fit": {k: first[k] for k in ("max_steps", "fitted_at_step", "s_per_step", "timed_steps")},
        }
        self.adopt(entry)
        return entry


def describe(entry: dict, step: int) -> str:
    """One log line for a fit entry."""
    e = entry
    return (
        f"--fit-to-minutes: {e['s_per_step']:.3f} s/step over the {e['timed_steps']} steps before step {step}, "
        f"{e['budget_s'] - e['spent_s']:.0f} s of {e['budget_s']:.0f} left (reserve {e['reserve_s']:.0f} s, "
        f"{e['xsim_evaluations']} xsim evaluations at ~{e['xsim_s_estimate']:.1f} s): schedule {e['max_steps']} "
        f"steps (upper bound {e['upper_bound']}), warmup + cosine from step {e['hold']}"
    )
