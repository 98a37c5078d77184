"""One optimizer step on a DeepSpeed engine: `gas` micro batches of forward, backward and engine step.

DeepSpeed averages gradients over micro batches and ranks, clips (gradient_clipping) and steps AdamW, then the
LambdaLR of pipeline/training/schedule.py. The step's loss sums stay 0-d device tensors (one all-reduce on the
device, no host sync): metrics.jsonl reads them once per --log-every steps.

Non-finite loss: a micro batch whose loss is NaN/inf back-propagates NaN into one parameter's gradient instead (chosen
on the device with torch.where: no host sync), so DeepSpeed's ZeRO overflow check (any non-finite gradient, MAX over
ranks) skips the whole optimizer step and clears the gradients; the lr schedule does not advance. The counters say
how many steps were skipped in all and in a row (the trainer stops after --max-bad-steps in a row).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from pipeline.data.prefetch import MicroBatch
from runtime import collectives, devices, sync_debug

LOSS_KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss")
SYNC_DEBUG_AFTER = 3  # MEXMA_SYNC_DEBUG counts from this step on (the first steps allocate, compile, warm up)


class OptimizerStep:
    """`__call__(next_batch)` runs one optimizer step -> its metrics (losses, lr, grad norm, throughput); counts the
    steps, the skipped ones and those skipped in a row."""

    def __init__(self, engine, gas: int, world: int):
        self.engine, self.gas, self.world = engine, gas, world
        self.step = self.skipped_total = self.bad_in_row = 0
        self._poison: torch.nn.Parameter | None = None  # gets NaN gradients on a non-finite loss

    @property
    def applied(self) -> int:
        """Optimizer steps that changed the weights: the lr schedule's position."""
        return self.step - self.skipped_total

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped_total": self.skipped_total, "bad_in_row": self.bad_in_row}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped_total, self.bad_in_row = state["step"], state["skipped_total"], state["bad_in_row"]

    def __call__(self, next_batch: Callable[[], MicroBatch]) -> dict:
        """MEXMA_SYNC_DEBUG=1 (CUDA) adds syncs_per_step to the record after SYNC_DEBUG_AFTER steps."""
        debug = os.environ.get("MEXMA_SYNC_DEBUG") == "1" and self.step >= SYNC_DEBUG_AFTER
        with sync_debug.count_syncs(debug) as syncs:
            record = self._run(next_batch)
        if syncs[0] is not None:
            record["syncs_per_step"] = syncs[0]
        return record

    def _run(self, next_batch) -> dict:
        t0 = time.time()
        lr = self.engine.get_lr()[0]
        skipped_before = self.engine.skipped_steps  # a host int: DeepSpeed's overflow check is the step's one sync
        sums = 0
        for _ in range(self.gas):
            sums = sums + self._micro_step(next_batch())  # (7,) float64 on the device
        collectives.all_reduce(sums)
        self.step += 1
        skipped = self.engine.skipped_steps > skipped_before
        self.skipped_total += int(skipped)
        self.bad_in_row = self.bad_in_row + 1 if skipped else 0
        dt = time.time() - t0  # host time: DeepSpeed's overflow check has waited for the device
        n = self.gas * self.world
        grad_norm = self.engine.get_global_grad_norm()
        if skipped or grad_norm is None:
            grad_norm = float("inf")
        return {
            **{key: sums[i] / n for i, key in enumerate(LOSS_KEYS)},
            "lr": lr,
            "grad_norm": grad_norm if isinstance(grad_norm, torch.Tensor) else float(grad_norm),
            "tokens_per_s": sums[4] / dt,
            "pairs_per_s": sums[5] / dt,
            "tokens": sums[4],
            "pairs": sums[5],
            "n_masked": sums[6],
            "skipped": skipped,
            "skipped_total": self.skipped_total,
            "time": time.time(),
        }

    def _micro_step(self, mb: MicroBatch) -> torch.Tensor:
        """Forward, backward, DeepSpeed step -> (7,) float64 on the device: loss, mlm, cls, koleo, tokens, pairs,
        n_masked. No .item() / int() / bool() of a tensor (tests/pipeline/test_prefetch.py counts them)."""
        device = self.engine.device
        out = self.engine(**devices.to_device(mb.batch, device))
        self.engine.backward(self._finite_or_poison(out["loss"]))
        self.engine.step()
        losses = torch.stack([out[k].detach().reshape(()).double() for k in LOSS_KEYS])  # (4,)
        n_masked = torch.as_tensor(out["n_masked"], dtype=torch.float64, device=device).reshape(1)
        return torch.cat([losses, mb.counts.to(device, non_blocking=True), n_masked])

    def _finite_or_poison(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss where finite; else 0 plus NaN x (the smallest parameter's sum), so that parameter's gradient is
        NaN and ZeRO's overflow check skips the step on every rank. Chosen on the device: no host sync."""
        if self._poison is None:
            self._poison = min((p for p in self.engine.module.parameters() if p.requires_grad), key=torch.numel)
        finite = torch.isfinite(loss)
        nan_if_bad = torch.where(finite, 0.0, float("nan"))
        return torch.where(finite, loss, 0.0) + self._poison.sum() * nan_if_bad
