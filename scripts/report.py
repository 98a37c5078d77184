"""Markdown + PNG reports of the demo and the ablation from files the stages leave behind.

Inputs are only files: the prepared dataset's `manifest.json` (data_prep), a run's `metrics.jsonl`
(pipeline/training/metrics.py: one record per optimizer step, and with --xsim-every one `"split": "xsim"` record per
in-training evaluation) and each evaluation's `results.json` (python -m eval:
`{"languages": {lang: {"errors", "n", "error_pct"}}, "average": {...}}`, the average pooled as
100 x sum(errors) / sum(n)), and the mining stage's `mine-{label}/mine.json` (scripts/mine_demo.py). So a report
can be rebuilt after the fact: `python scripts/report.py runs/demo`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from pipeline.training.metrics import read_metrics
from scripts.mine_demo import mining_lines

LOSS_KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss")
XSIM_KEY = "xsim_error_pct"  # eval/train_hook.py METRIC: pooled X -> target error % of an in-training evaluation


class ReportError(RuntimeError):
    """An input file is missing or malformed; the message names it."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ReportError(f"{path}: missing") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e


def load_results(eval_dir: Path) -> dict:
    """results.json of one evaluation, checked for the fields the report reads."""
    res = read_json(Path(eval_dir) / "results.json")
    for key in ("languages", "average"):
        if key not in res:
            raise ReportError(f"{Path(eval_dir) / 'results.json'}: no {key!r} field")
    return res


# -- summaries -------------------------------------------------------------------------------------------------------
def data_summary(manifest: dict) -> dict:
    """Pairs, languages and tokens of a prepared dataset (tokens = n x mean length per side, with <s> and </s>)."""
    pairs = manifest.get("language_pairs", {})
    langs = sorted({lang for key in pairs for lang in key.split("-")})
    tokens = sum(round(s.get("n", 0) * s.get("mean", 0.0)) for s in manifest.get("token_lengths", {}).values())
    rows = manifest.get("rows", {})
    return {
        "pairs_train": rows.get("train", 0),
        "pairs_valid": rows.get("valid", 0),
        "read": manifest["counts"]["read"],
        "kept": manifest["counts"]["kept"],
        "skipped": sum(manifest["counts"]["skipped"].values()),
        "language_pairs": len(pairs),
        "languages": len(langs),
        "tokens": tokens,
        "vocab_size": manifest["tokenizer"]["vocab_size"],
    }


def training_summary(records: list[dict], last: int = 10) -> dict:
    """Steps, wall time, throughput and the mean of the last `last` steps' losses of one run."""
    if not records:
        raise ReportError("metrics.jsonl has no training records")
    wall = float(records[-1]["elapsed_s"])
    tokens, pairs = sum(r["tokens"] for r in records), sum(r["pairs"] for r in records)
    tail = records[-last:]
    out = {
        "steps": records[-1]["step"],
        "wall_s": wall,
        "tokens": tokens,
        "pairs": pairs,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "pairs_per_step": pairs / len(records),
        "skipped": records[-1].get("skipped_total", 0),
    }
    out.update({f"final_{k}": statistics.fmean(r[k] for r in tail) for k in LOSS_KEYS})
    return out


def pooled(res: dict) -> float:
    return float(res["average"]["error_pct"])


# -- tables ----------------------------------------------------------------------------------------------------------
def error_table(results: dict[str, dict]) -> str:
    """Markdown: one row per language (sorted), one column per labelled evaluation, pooled average last."""
    labels = list(results)
    langs = sorted(set().union(*(r["languages"] for r in results.values())))
    lines = ["| language | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for lang in langs:
        cells = [f"{r['languages'][lang]['error_pct']:.1f}" if lang in r["languages"] else "" for r in results.values()]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines.append("| **pooled** | " + " | ".join(f"**{pooled(r):.2f}**" for r in results.values()) + " |")
    return "\n".join(lines)


def seed_table(errors: dict[str, list[float]]) -> str:
    """Markdown: per variant, each seed's pooled error, mean, and spread (sample std; max - min)."""
    lines = [
        "| variant | seeds | pooled xsim error % per seed | mean | std | max - min |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, vals in errors.items():
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(
            f"| {name} | {len(vals)} | {', '.join(f'{v:.2f}' for v in vals)} | {statistics.fmean(vals):.2f} "
            f"| {std:.2f} | {max(vals) - min(vals):.2f} |"
        )
    return "\n".join(lines)


# -- pictures --------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: dict[str, list[dict]], path: Path, smooth: int = 10) -> Path:
    """2 x 2 panels (total, mlm, cls, koleo) against step, one line per run, moving average over `smooth` steps."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, key in zip(axes.flat, LOSS_KEYS):
        for label, records in runs.items():
            steps, vals = [r["step"] for r in records], [float(r[key]) for r in records]
            ax.plot(steps, _moving_average(vals, smooth), label=label, linewidth=1.2)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"training losses (moving average over {smooth} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _moving_average(vals: list[float], w: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(vals):
        acc += v - (vals[i - w] if i >= w else 0.0)
        out.append(acc / min(i + 1, w))
    return out


def plot_errors(results: dict[str, dict], path: Path) -> Path:
    """Grouped bars: xsim error % per language for each labelled evaluation, dashed lines at the pooled averages."""
    plt = _pyplot()
    langs = sorted(set().union(*(r["languages"] for r in results.values())))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(langs) + 2), 4.8))
    for i, (label, res) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(langs))]
        ys = [res["languages"].get(lang, {}).get("error_pct", float("nan")) for lang in langs]
        ax.bar(xs, ys, width, label=f"{label} (pooled {pooled(res):.1f})", color=f"C{i}")
        ax.axhline(pooled(res), color=f"C{i}", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=7)
    ax.set_ylabel("xsim error % (X -> eng_Latn)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def baseline_line(results: dict[str, dict]) -> list[str]:
    """One sentence: how far the trained model's pooled error is from the character 3-gram baseline's."""
    if "trained" not in results or "char3gram" not in results:
        return []
    trained, grams = pooled(results["trained"]), pooled(results["char3gram"])
    side = "below (better than)" if trained < grams else "above (worse than)"
    return [
        f"Pooled, the trained model is {abs(trained - grams):.2f} points {side} the character 3-gram baseline "
        f"({trained:.2f}% against {grams:.2f}%); the dev-split curve below shows where its training stood.",
        "",
    ]


def xsim_curves(runs: dict[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """label -> [(step, pooled xsim error %)] of the run's in-training evaluations (empty without --xsim-every)."""
    return {
        label: [(r["step"], float(r[XSIM_KEY])) for r in read_metrics(d, split="xsim")] for label, d in runs.items()
    }


def xsim_table(curves: dict[str, list[tuple[int, float]]]) -> str:
    """Markdown: one row per evaluated step, one column per run (blank where a run has no evaluation there)."""
    by_run = {label: dict(points) for label, points in curves.items()}
    steps = sorted(set().union(*by_run.values()))
    lines = ["| step | " + " | ".join(by_run) + " |", "| ---: |" + " ---: |" * len(by_run)]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{v[step]:.2f}" if step in v else "" for v in by_run.values()) + " |")
    return "\n".join(lines)


def plot_xsim(curves: dict[str, list[tuple[int, float]]], levels: dict[str, float], path: Path) -> Path:
    """Pooled xsim error % against step, one line per run, the `levels` (untrained, char3gram) as horizontal lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, points) in enumerate(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=f"C{i}")
    for j, (label, value) in enumerate(levels.items()):
        ax.axhline(value, color=f"C{len(curves) + j}", linestyle="--", linewidth=1.0, label=f"{label} ({value:.1f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("pooled xsim error % (dev split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("retrieval during training (X -> eng_Latn, dev split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def fitted_schedule(run_dir: Path) -> dict | None:
    """The `--fit-to-minutes` entry of a run's config.json (pipeline/training/schedule.py), None for a fixed length."""
    config = read_json(Path(run_dir) / "config.json") if (Path(run_dir) / "config.json").is_file() else {}
    return config.get("resolved", {}).get("schedule")


def steps_line(summaries: dict[str, dict], settings: dict[str, dict] | None, schedules: dict | None = None) -> str:
    """How many steps each run got, against its schedule's length: the step cap, or the length --fit-to-minutes
    chose from the measured speed (a run below it hit the wall-clock cap)."""
    parts = []
    for label, s in summaries.items():
        fit = (schedules or {}).get(label)
        cap = fit["max_steps"] if fit else (settings or {}).get(label, {}).get("step cap")
        why = "" if cap is None or s["steps"] >= cap else ", stopped by the wall-clock cap"
        if fit:
            first = fit.get("first_fit")  # the refit's entry keeps the first fit's length and speed
            before = f"; first fit {first['max_steps']} steps at {first['s_per_step']:.2f} s/step" if first else ""
            why += (
                f" (schedule fitted to {fit['budget_s'] / 60:.1f} min at {fit['s_per_step']:.2f} s/step, measured "
                f"over steps {fit['fitted_at_step'] - fit['timed_steps'] + 1}-{fit['fitted_at_step']}{before})"
            )
        parts.append(f"{label} {s['steps']}" + (f" of {cap}" if cap is not None else "") + why)
    return "Steps each run got: " + "; ".join(parts) + "."


def _xsim_section(curves: dict, levels: dict[str, float], out: Path) -> list[str]:
    if not any(curves.values()):
        return []
    plot_xsim(curves, levels, out / "xsim.png")
    lines = ["## Retrieval during training (pooled xsim error %, dev split)", "", xsim_table(curves), ""]
    if levels:
        lines += ["Levels on the same split: " + ", ".join(f"{k} {v:.2f}" for k, v in levels.items()) + ".", ""]
    return lines + ["![xsim during training](xsim.png)", ""]


# -- the demo report -------------------------------------------------------------------------------------------------
def ablation_note(report: Path) -> list[str]:
    """The demo report's pointer to `make ablation` (report: its report.md), with its pooled errors when it ran."""
    lines = [
        "## The paper's hyperparameters and the loss ablation",
        "",
        "The demo trains one model with all its minutes. The paper's hyperparameters on the same model (recipe "
        "`tiny-paper`: lr 1e-4, 30% warmup, loss weights 1 / 1 / 0.01, dropout 0.1) and the loss ablation "
        f"(alignment only, + cross-unmasking, + KoLeo) are trained by `make ablation`: `{report}`.",
        "",
    ]
    results = Path(report).with_name("results.json")
    if results.is_file():
        errors = read_json(results).get("errors", {})
        means = ", ".join(f"{name} {statistics.fmean(v):.2f}%" for name, v in errors.items() if v)
        lines[-1:-1] = [f"Its pooled devtest errors here (mean over seeds): {means}."]
    return lines


def _settings_table(settings: dict[str, dict]) -> str:
    keys = sorted(set().union(*settings.values()))
    lines = ["| setting | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]
    lines += [f"| {k} | " + " | ".join(str(s.get(k, "")) for s in settings.values()) + " |" for k in keys]
    return "\n".join(lines)


def _training_table(summaries: dict[str, dict]) -> str:
    lines = [
        "| run | steps | pairs/step | wall time | tokens/s | final loss | mlm | cls | koleo |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, s in summaries.items():
        lines.append(
            f"| {label} | {s['steps']} | {s['pairs_per_step']:.0f} | {s['wall_s'] / 60:.1f} min | "
            f"{s['tokens_per_s']:.0f} | {s['final_loss']:.3f} | {s['final_mlm_loss']:.3f} | "
            f"{s['final_cls_loss']:.4f} | {s['final_koleo_loss']:.3f} |"
        )
    return "\n".join(lines)


def write_demo_report(
    out: Path,
    manifest_path: Path,
    runs: dict[str, Path],
    evals: dict[str, Path],
    settings: dict[str, dict] | None = None,
    stage_times: dict[str, float] | None = None,
    dev_evals: dict[str, Path] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """out/report.md + out/losses.png + out/errors.png (+ out/xsim.png when the runs scored xsim during training);
    runs: label -> training dir, evals: label -> eval dir, dev_evals: label -> eval dir on the split the runs scored
    during training (the horizontal lines of xsim.png); notes: Markdown lines after the curves."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_summary(read_json(manifest_path))
    metrics = {label: read_metrics(d) for label, d in runs.items()}
    for label, recs in metrics.items():
        if not recs:
            raise ReportError(f"{Path(runs[label]) / 'metrics.jsonl'}: no training records ({label})")
    summaries = {label: training_summary(recs) for label, recs in metrics.items()}
    results = {label: load_results(d) for label, d in evals.items()}
    plot_losses(metrics, out / "losses.png")
    plot_errors(results, out / "errors.png")
    curves = xsim_curves(runs)
    levels = {label: pooled(load_results(d)) for label, d in (dev_evals or {}).items()}
    lines = [
        "# MEXMA demo report",
        "",
        "## Data",
        "",
        f"`{manifest_path}`: {data['read']} catalogue messages read, {data['kept']} pairs kept "
        f"({data['skipped']} skipped), {data['pairs_train']} train + {data['pairs_valid']} valid pairs in "
        f"{data['language_pairs']} language pairs ({data['languages']} languages), {data['tokens']:,} tokens "
        f"(both sides, with `<s>`/`</s>`), trained tokenizer of {data['vocab_size']} ids.",
        "",
        "## Training",
        "",
        _training_table(summaries),
        "",
        "Final losses: mean of the last 10 steps. tokens/s: all four views' tokens over the run's wall time.",
        steps_line(summaries, settings, {label: fitted_schedule(d) for label, d in runs.items()}),
        "",
    ]
    if settings:
        lines += ["## Settings", "", _settings_table(settings), ""]
    lines += [
        "## xsim error % per language (X -> eng_Latn, held-out test set)",
        "",
        error_table(results),
        "",
        *baseline_line(results),
        "![error per language](errors.png)",
        "",
        *_xsim_section(curves, levels, out),
        *mining_lines(out),
        *(notes or []),
        "## Loss curves",
        "",
        "![losses](losses.png)",
        "",
    ]
    if stage_times:
        lines += ["## Stage wall times", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.0f} |" for k, v in stage_times.items()]
        lines += [f"| **total** | {sum(stage_times.values()):.0f} |", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """Rebuild runs/demo/report.md from the files a finished (or partial) demo left."""
    p = argparse.ArgumentParser(prog="python scripts/report.py", description=main.__doc__)
    p.add_argument("demo_dir", nargs="?", default="runs/demo", help="the demo's output directory")
    p.add_argument("--manifest", default="data/prepared/manifest.json", help="the prepared dataset's manifest")
    p.add_argument("--ablation", default="runs/ablation/report.md", help="`make ablation`'s report, linked to")
    args = p.parse_args(argv)
    root = Path(args.demo_dir)
    if (root / "metrics.jsonl").is_file():  # one training run, not a demo directory: its curves
        from pipeline.plot import main as plot_main

        print(f"{root} is a training run: drawing its curves (python -m pipeline.plot {root})")
        return plot_main([str(root)])
    runs = {"trained": root / "train"} if (root / "train" / "metrics.jsonl").is_file() else {}
    labels = ("untrained", "trained", "char3gram")
    evals = {label: root / label for label in labels if (root / label / "results.json").is_file()}
    dev_evals = {
        label: root / f"{label}-dev"
        for label in ("untrained", "char3gram")
        if (root / f"{label}-dev" / "results.json").is_file()
    }
    if not runs or not evals:
        print(
            f"error: {root}: no demo training ({root}/train/metrics.jsonl) or evaluation ({root}/trained/results.json)"
            "; for one training run: python -m pipeline.plot RUN",
            file=sys.stderr,
        )
        return 2
    saved = root / "demo_state.json"
    state = read_json(saved) if saved.is_file() else {}
    try:
        path = write_demo_report(
            root,
            Path(args.manifest),
            runs,
            evals,
            state.get("settings"),
            state.get("stages"),
            dev_evals,
            ablation_note(Path(args.ablation)),
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
