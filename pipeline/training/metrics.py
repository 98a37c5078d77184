"""Run logging from rank 0: a progress line, OUTPUT/metrics.jsonl, wandb (offline by default).

metrics.jsonl holds one JSON object per line:
- one per optimizer step, `"split": "train"`: step, epoch, loss, mlm_loss, cls_loss, koleo_loss, lr, grad_norm,
  tokens_per_s, pairs_per_s, tokens, pairs, n_masked, skipped (bool), skipped_total, time (unix), elapsed_s;
- one per validation, `"split": "valid"`: step, loss, mlm_loss, cls_loss, koleo_loss, acc_src2trg, acc_trg2src,
  pairs, time, elapsed_s.
On resume, records after the resumed step (logged by the interrupted run after its last checkpoint) are dropped, so
the file reads as one uninterrupted history.

Train records may hold 0-d device tensors (the step's loss sums, left on the accelerator so the step never waits for
the host): they are buffered and read together, one `torch.stack(...).tolist()` per device, every --log-every steps,
at a skipped step, before any other record, and at `flush()` (the trainer calls it before each checkpoint) and
`close()`. The file's content is the same as with per-step reads: one record per step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from pipeline.training.console import Eta

log = logging.getLogger("pipeline.train")
METRICS = "metrics.jsonl"
INT_KEYS = frozenset({"tokens", "pairs", "n_masked"})  # counts summed as float64 on the device, written as ints


def _finite_or_none(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)  # JSON has no NaN/inf: keep them readable


class MetricsLogger:
    """Append-only metrics.jsonl + optional wandb; every method is a no-op on ranks other than 0."""

    def __init__(
        self,
        output_dir: str | Path,
        rank: int,
        wandb_mode: str = "off",
        project: str = "mexma",
        run_name: str = "",
        config: dict | None = None,
        log_every: int = 10,
    ):
        self.path = Path(output_dir) / METRICS
        self.enabled, self.log_every = rank == 0, log_every
        self._wandb = None
        # wandb starts with the first record written: a relaunch of a finished run opens no wandb run
        self._wandb_args = (output_dir, wandb_mode, project, run_name, config) if wandb_mode != "off" else None
        self._buffer: list[dict] = []  # records not yet written (their tensors not yet read)
        self._progress: list[tuple[dict, int]] = []  # progress lines due for buffered records
        self._eta = Eta()

    def truncate_after(self, step: int) -> None:
        """Drop records of steps > step (an interrupted run's tail beyond its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and _step(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        """Append `record` (tensor values read later, in a batch: see the module docstring)."""
        if not self.enabled:
            return
        if record.get("split", "train") != "train":
            self.flush()  # records stay in order
        self._buffer.append(record)
        if not _pending(record) or record["step"] % self.log_every == 0 or record.get("skipped"):
            self.flush()

    def flush(self) -> None:
        """Read the buffered records' tensors (one sync per device) and write them all."""
        if not self.enabled or not self._buffer:
            return
        _resolve(self._buffer)
        records = [{k: _finite_or_none(v) for k, v in r.items()} for r in self._buffer]
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        if self._wandb_args is not None:
            self._wandb, self._wandb_args = _start_wandb(*self._wandb_args), None
        for record in records if self._wandb is not None else ():
            prefix = record.get("split", "train")
            self._wandb.log(
                {f"{prefix}/{k}": v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"]
            )
        self._buffer.clear()
        due, self._progress = self._progress, []
        for r, max_steps in due:
            self.progress(r, max_steps)

    def progress(self, r: dict, max_steps: int) -> None:
        """One line per --log-every steps, and for every skipped step (printed once the record is read)."""
        if not self.enabled:
            return
        eta = self._eta(r["step"], r["time"], max_steps)  # the first call starts the clock
        if r["step"] % self.log_every and not r["skipped"] and r["step"] != max_steps:
            return
        if _pending(r):
            self._progress.append((r, max_steps))
            return
        skipped = f" SKIPPED (non-finite loss; {r['skipped_total']} so far)" if r["skipped"] else ""
        log.info(
            "step %d/%d ep %d | loss %.4f mlm %.4f cls %.4f koleo %.4f | lr %.3g | gnorm %.3f | "
            "%.0f tok/s %.1f pairs/s | %s%s",
            r["step"],
            max_steps,
            r["epoch"],
            r["loss"],
            r["mlm_loss"],
            r["cls_loss"],
            r["koleo_loss"],
            r["lr"],
            r["grad_norm"],
            r["tokens_per_s"],
            r["pairs_per_s"],
            eta,
            skipped,
        )

    def close(self) -> None:
        self.flush()
        if self._wandb is not None:
            self._wandb.finish()


def _pending(record: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in record.values())


def _resolve(records: list[dict]) -> None:
    """Replace every tensor value of `records` by its number, in place: one stack + tolist per device."""
    by_device: dict[torch.device, list[tuple[dict, str]]] = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, torch.Tensor):
                by_device.setdefault(v.device, []).append((r, k))
    for slots in by_device.values():
        values = torch.stack([r[k].detach().reshape(()).double() for r, k in slots]).tolist()
        for (r, k), v in zip(slots, values):
            r[k] = int(round(v)) if k in INT_KEYS and math.isfinite(v) else v


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a kill: dropped with the tail


def _start_wandb(output_dir, mode: str, project: str, run_name: str, config: dict | None):
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; --wandb %s ignored", mode)
        return None
    return wandb.init(
        project=project,
        name=run_name or Path(output_dir).name,
        mode=mode,
        dir=str(output_dir),
        config=config,
        resume="allow",
        id=_run_id(output_dir),
    )


def _run_id(output_dir) -> str:
    """A stable wandb id per output directory, so a resumed run continues the same wandb run."""
    path = Path(output_dir) / "wandb_id.txt"
    if not path.is_file():
        import uuid

        path.write_text(uuid.uuid4().hex[:16])
    return path.read_text().strip()


def read_metrics(output_dir: str | Path, split: str = "train") -> list[dict]:
    """metrics.jsonl records of one split, in order (used by tests, the demo and the ablation)."""
    path = Path(output_dir) / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, filter(str.strip, lines)) if r.get("split", "train") == split]
