"""The training console: the project's lines, each once (rank 0), the others' only with --verbose, and a closing
summary that says where the run is and what to run next.

- `configure_logging(rank)`: rank 0 logs INFO, the other ranks warnings and errors only, so a line that every rank
  logs ("resumed from ...") is printed once.
- `quiet_others(verbose)`: without --verbose, wandb prints nothing (it still writes its files under OUTPUT/wandb) and
  DeepSpeed's loggers only warnings.
- `Eta`: the remaining time of a step line, from this launch's own pace.
- `summary_lines(output_dir)`: steps, time, final losses, best in-training xsim and mining F1, the checkpoint, the
  export command; read from the files the run leaves (metrics.jsonl, checkpoints/), so it holds for a resumed run too.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import statistics
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOSSES = ("loss", "mlm_loss", "cls_loss", "koleo_loss")
XSIM_KEY = "xsim_error_pct"  # the in-training evaluation's pooled error (eval/train_hook.py METRIC)
MINE_KEY = "mine_f1_pct"  # the in-training mining's pooled F1 (eval/mine_hook.py METRIC)


def env_rank() -> int:
    """The global rank the launcher gives (0 for a plain `python` run)."""
    return int(os.environ.get("RANK", 0))


def configure_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=LOG_FORMAT)


def quiet_others(verbose: bool) -> None:
    """wandb and DeepSpeed print only with --verbose (a user's WANDB_SILENT wins)."""
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("DeepSpeed").setLevel(logging.INFO if verbose else logging.WARNING)


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Eta:
    """Remaining time from the pace since the first step this launch saw (a resumed run's earlier steps, its
    start-up and its compilation are not counted)."""

    def __init__(self):
        self._start: tuple[int, float] | None = None

    def __call__(self, step: int, now: float, max_steps: int) -> str:
        if self._start is None:
            self._start = (step, now)
        s0, t0 = self._start
        if step <= s0 or now <= t0:
            return "eta ?"
        return "eta " + format_duration((now - t0) / (step - s0) * max(0, max_steps - step))


def _records(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    out = []
    for line in filter(str.strip, lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return out


def _checkpoint(output_dir: Path, name: str) -> str | None:
    path = output_dir / "checkpoints" / name
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def summary_lines(output_dir: str | Path, last: int = 10) -> list[str]:
    """The closing lines of a run (empty when it logged no step)."""
    out = Path(output_dir)
    records = _records(out)
    train = [r for r in records if r.get("split", "train") == "train"]
    if not train:
        return []
    tail = train[-last:]
    losses = " ".join(
        f"{k.removesuffix('_loss')} {statistics.fmean(float(r[k]) for r in tail):.4f}" for k in LOSSES if k in tail[-1]
    )
    lines = [
        f"done: {train[-1]['step']} steps in {format_duration(float(train[-1].get('elapsed_s', 0)))}; "
        f"final losses (mean of the last {len(tail)} steps): {losses}"
    ]
    xsim = [r for r in records if r.get("split") == "xsim" and isinstance(r.get(XSIM_KEY), int | float)]
    if xsim:
        best = min(xsim, key=lambda r: r[XSIM_KEY])
        lines.append(f"best in-training xsim error: {best[XSIM_KEY]:.2f}% at step {best['step']}")
    mined = [r for r in records if r.get("split") == "mine" and isinstance(r.get(MINE_KEY), int | float)]
    if mined:
        best = max(mined, key=lambda r: r[MINE_KEY])
        lines.append(f"best in-training mining F1: {best[MINE_KEY]:.2f}% at step {best['step']}")
    latest, best_tag = _checkpoint(out, "latest"), _checkpoint(out, "best")
    if latest:
        lines.append(f"checkpoint: {out / 'checkpoints' / latest}" + (f" (best: {best_tag})" if best_tag else ""))
        export = f"python -m pipeline.export {shlex.quote(str(out))} {shlex.quote(str(out) + '-hf')}"
        lines.append(f"next: {export}" + (" --tag best" if best_tag else ""))
    return lines


def log_summary(output_dir: str | Path, log: logging.Logger) -> None:
    for line in summary_lines(output_dir):
        log.info("%s", line)
