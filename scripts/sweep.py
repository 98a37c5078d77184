"""One hyperparameter experiment at the demo's scale, logged: train (ZeRO-2, 2 CPU processes), export, evaluate.

    python scripts/sweep.py NAME --recipe tiny-cpu --steps 150 --set lr=5e-4 --set warmup-fraction=0.05

Starts from a recipe of recipes/ (--recipe, default tiny-paper: the paper's hyperparameters on the demo's model) and
applies each `--set FLAG=VALUE` (train.py flag names without `--`; `true`/`false` for switches such as koleo-global).
Runs at a fixed step count with a generous wall-clock cap, so runs compare at equal steps however busy the CPU is.
Appends one JSON line per run to `runs/sweep/log.jsonl`: name, recipe and changes, steps, wall time, tokens/s, final
losses, pooled xsim error, the fitted schedule if any, the git commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from pipeline.training.metrics import read_metrics
from scripts.common import StageError, eval_cmd, export_cmd, read_stamp, recipe_settings, run_stage, train_cmd
from scripts.report import load_results, pooled, training_summary


def parse_value(text: str):
    """'true'/'false' -> bool, numbers -> int/float, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise SystemExit(f"--set {item!r}: expected FLAG=VALUE with a train.py flag name without '--'")
        out[key] = parse_value(value)
    return out


def run_one(name: str, recipe: str, overrides: dict, args: argparse.Namespace) -> dict:
    """Train + export + evaluate one recipe (+ overrides: flag -> value) under args.root/name; -> the log record.

    args.reuse keeps a finished training / export of an earlier call (e.g. to evaluate again on other --langs)."""
    root = Path(args.root) / name
    reuse = getattr(args, "reuse", False)
    if root.exists() and not reuse:
        shutil.rmtree(root)
    start, langs = time.time(), getattr(args, "langs", "all")
    if not (reuse and (root / "train" / "checkpoints" / "latest").is_file()):
        run_stage(
            f"{name}: train",
            train_cmd(
                args.data,
                root / "train",
                recipe,
                overrides,
                steps=args.steps,
                minutes=args.minutes,
                seed=args.seed,
                procs=args.procs,
                pairs_per_step=args.pairs,
                extra=args.extra,
            ),
            root / "train.log",
        )
    if not (reuse and (root / "hf" / "mexma_export.json").is_file()):
        run_stage(f"{name}: export", export_cmd(root / "train", root / "hf"), root / "export.log", echo=False)
    ev = root / ("eval" if langs == "all" else f"eval_{len(langs.split(','))}langs")
    run_stage(f"{name}: eval", eval_cmd(str(root / "hf"), args.flores, ev, langs), root / "eval.log", echo=False)
    summary = training_summary(read_metrics(root / "train"))
    res = load_results(ev)
    config = read_stamp(root / "train" / "config.json") or {}
    return {
        "name": name,
        "recipe": recipe,
        "overrides": overrides,
        "flags": recipe_settings(recipe, overrides),
        "git_sha": (read_stamp(root / "train" / "run_info.json") or {}).get("git_sha"),
        "schedule": config.get("resolved", {}).get("schedule"),
        "seed": args.seed,
        "procs": args.procs,
        "pairs_per_step": args.pairs,
        "extra": args.extra,
        "steps": summary["steps"],
        "wall_s": round(summary["wall_s"], 1),
        "tokens_per_s": round(summary["tokens_per_s"]),
        "langs": langs,
        "pooled_error_pct": round(pooled(res), 2),
        **{k: round(v, 4) for k, v in summary.items() if k.startswith("final_")},
        "total_s": round(time.time() - start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(root: Path) -> str:
    """Markdown of every record in root/log.jsonl: recipe and the flags changed, steps, losses (KoLeo at the first
    and last 10 steps: rising = the embeddings collapse), pooled error."""
    lines = [
        "| run | recipe + changes | steps | mlm | cls | koleo first -> last 10 | langs | pooled error % |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for line in (root / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        diff = " ".join([r["recipe"], *(f"{k}={v}" for k, v in r.get("overrides", {}).items())])
        koleo = [m["koleo_loss"] for m in read_metrics(root / r["name"] / "train")]
        first, last = sum(koleo[:10]) / 10, sum(koleo[-10:]) / 10
        langs = r.get("langs", "all")
        langs = "all" if langs == "all" else f"{len(langs.split(','))}"
        lines.append(
            f"| {r['name']} | {diff} | {r['steps']} | {r['final_mlm_loss']:.2f} | {r['final_cls_loss']:.3f} | "
            f"{first:.2f} -> {last:.2f} | {langs} | {r['pooled_error_pct']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--table"]:
        print(table(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/sweep")))
        return 0
    p = argparse.ArgumentParser(
        prog="python scripts/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", help="run name: runs/sweep/NAME/{train,hf,eval}; `--table [ROOT]` prints the log instead")
    p.add_argument("--recipe", default="tiny-paper", help="recipe of recipes/ (or a JSON file) to start from")
    p.add_argument("--set", dest="sets", action="append", default=[], help="FLAG=VALUE over the recipe")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps (the schedule's length)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock cap (a safety net, not the budget)")
    p.add_argument("--pairs", type=int, default=None, help="pairs per optimizer step, all ranks together (default: "
                   "the recipe's)")  # fmt: skip
    p.add_argument("--procs", type=int, default=2, help="training processes (ZeRO-2 ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--flores", default="data/testset")
    p.add_argument("--root", default="runs/sweep")
    p.add_argument("--langs", default="all", help="test languages (comma-separated; pooled over these only)")
    p.add_argument("--reuse", action="store_true", help="keep a finished training/export of this NAME")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags, verbatim (last)")
    args = p.parse_args(argv)
    try:
        record = run_one(args.name, args.recipe, parse_sets(args.sets), args)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    log = Path(args.root) / "log.jsonl"
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
