"""Curves of any training run from its metrics.jsonl: `python -m pipeline.plot RUN [--out FILE] [--smooth N]`.

One PNG (default RUN/curves.png) with a panel each for the total, mlm, cls and KoLeo losses (train steps, moving
average over --smooth steps, held-out validation points where the run has them), the learning rate, the throughput
(tokens/s) and the pooled in-training xsim error of `--xsim-every` (a note in the panel when the run has none).
The run may be unfinished: the file is read as it stands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.training.metrics import METRICS, read_metrics

LOSSES = (("loss", "total loss"), ("mlm_loss", "mlm loss"), ("cls_loss", "cls loss (MSE)"), ("koleo_loss", "KoLeo"))
XSIM_KEY = "xsim_error_pct"  # eval/train_hook.py METRIC


class PlotError(ValueError):
    """The run has no metrics to draw; the message names the file."""


def moving_average(vals: list[float], w: int) -> list[float]:
    """Trailing mean over up to `w` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(vals):
        acc += v - (vals[i - w] if i >= w else 0.0)
        out.append(acc / min(i + 1, w))
    return out


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def _panel(ax, title: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimizer step", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def _draw_losses(axes, train: list[dict], valid: list[dict], smooth: int) -> None:
    for ax, (key, title) in zip(axes, LOSSES):
        steps, vals = _series(train, key)
        ax.plot(steps, moving_average(vals, smooth), linewidth=1.2, label=f"train (mean of {smooth})")
        v_steps, v_vals = _series(valid, key)
        if v_steps:
            ax.plot(v_steps, v_vals, marker="o", linewidth=1.0, label="held-out valid")
        _panel(ax, title)
        ax.legend(fontsize=7)


def _draw_xsim(ax, xsim: list[dict]) -> None:
    steps, vals = _series(xsim, XSIM_KEY)
    if steps:
        ax.plot(steps, vals, marker="o", color="C3")
    else:
        ax.text(0.5, 0.5, "no in-training xsim\n(train with --xsim-every N)", ha="center", va="center", fontsize=9)
    _panel(ax, "pooled xsim error % (dev)")


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 10) -> Path:
    """Draw the curves of `run_dir`'s metrics.jsonl into `out` (default RUN/curves.png); -> the PNG's path."""
    run_dir = Path(run_dir)
    train = read_metrics(run_dir)
    if not train:
        raise PlotError(f"{run_dir / METRICS}: no training records (is {run_dir} a training output directory?)")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    _draw_losses(axes.flat[:4], train, read_metrics(run_dir, split="valid"), smooth)
    ax = axes.flat[4]
    ax.plot(*_series(train, "lr"))
    _panel(ax, "learning rate")
    ax = axes.flat[5]
    steps, tps = _series(train, "tokens_per_s")
    ax.plot(steps, moving_average(tps, smooth))
    _panel(ax, "throughput", "tokens/s")
    _draw_xsim(axes.flat[6], read_metrics(run_dir, split="xsim"))
    axes.flat[7].axis("off")
    last = train[-1]
    axes.flat[7].text(0, 0.9, _summary(last), va="top", fontsize=9, family="monospace")
    fig.suptitle(f"{run_dir}: {last['step']} steps", fontsize=11)
    fig.tight_layout()
    path = Path(out) if out else run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _summary(last: dict) -> str:
    lines = [f"step {last['step']}", f"elapsed {float(last.get('elapsed_s', 0)) / 60:.1f} min"]
    lines += [f"{key} {float(last[key]):.4f}" for key, _ in LOSSES if isinstance(last.get(key), int | float)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="training output directory (holds metrics.jsonl)")
    p.add_argument("--out", help="PNG to write (default RUN/curves.png)")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window of the train curves, in steps")
    args = p.parse_args(argv)
    if args.smooth < 1:
        p.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        path = plot_run(args.run, args.out, args.smooth)
    except PlotError as e:
        print(f"python -m pipeline.plot: error: {e}", file=sys.stderr)
        return 2
    print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
