"""What the trainer offers code that runs inside the loop (in-training evaluation): a narrow context and two calls.

A hook sees the step, the live model for encoding, a metrics sink, a checkpoint callback and the elapsed time, and
nothing else of the trainer. The trainer calls `after_step(ctx)` after every optimizer step (after logging,
validation and the periodic checkpoint) and `at_end(ctx)` once after the loop, unless a signal stopped the run.
Hooks are built at start-up by factories that pipeline/train.py passes in (the xsim hook lives in
eval/train_hook.py), so pipeline/ never imports the evaluation code.

A hook must leave the training's random streams and the model's train/eval mode as it found them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HookContext:
    """step: optimizer steps done; model: the single-device module (ZeRO stages 0-2 keep every parameter whole on
    every rank) on `device`; write: the metrics sink (metrics.jsonl and wandb; every rank calls it, rank 0 writes);
    best: the best checkpoint's record so far ({"tag", "step", "score", ...}, read on rank 0, None elsewhere or
    when there is none); save_best(score, metric, fingerprint): save this step's checkpoint and mark it `best`, scored
    on the test set `fingerprint` names (collective: every rank calls it; no second save when the step is saved
    already); elapsed: seconds of the run so far."""

    step: int
    model: torch.nn.Module
    device: torch.device
    write: Callable[[dict], None]
    best: Callable[[], dict | None]
    save_best: Callable[[float, str, str], str]
    elapsed: Callable[[], float]


class Hook:
    """Base of a trainer hook. `every` and `tokens` let the --fit-to-minutes schedule budget for the hook: it runs
    every `every` steps and once at the end, encoding about `tokens` tokens per rank each time. `record`: fields for
    the run record, compared on a relaunch like the config (an evaluation set's content fingerprint)."""

    every: int = 0
    tokens: int = 0
    record: dict = {}

    def after_step(self, ctx: HookContext) -> None:
        pass

    def at_end(self, ctx: HookContext) -> None:
        pass


# (TrainConfig, special token ids, rank, world size) -> a hook, or None when its flags leave it off
HookFactory = Callable[[object, dict, int, int], "Hook | None"]


def budget(hooks: list[Hook]) -> tuple[int, int]:
    """(every, tokens) of one hook standing for all of them in the --fit-to-minutes estimate: the shortest cadence,
    and per evaluation the tokens every hook encodes over that many steps (its tokens x that cadence / its own)."""
    active = [h for h in hooks if h.every > 0]
    if not active:
        return 0, 0
    every = min(h.every for h in active)
    return every, round(sum(h.tokens * every / h.every for h in active))
