"""`make ablation`: the paper's ablation in small, and the paper's hyperparameters, each over several seeds, on the
demo's data, model and batch.

    python scripts/ablation.py [--seeds 0 1] [--steps N] [--minutes M] [--variants NAME ...]

Variants (MEXMA Table 6: alignment only, + token-level, + KoLeo), each a recipe of recipes/ and the flags it changes,
all with the same data, step count, wall-clock cap and seeds:
  alignment only            tiny-cpu --mlm-weight 0 --koleo-weight 0   (the CLS MSE alone)
  + cross-unmasking         tiny-cpu --koleo-weight 0                  (MSE + the unmasking head's MLM)
  + KoLeo                   tiny-cpu                                   (MSE + MLM + KoLeo: the demo's recipe)
  paper's hyperparameters   tiny-paper  (lr 1e-4, 30% warmup, loss weights 1 / 1 / 0.01, dropout 0.1: the reference)
Each run trains with ZeRO-2 on 2 CPU processes, is exported and evaluated on the held-out test set
(data/testset, xsim X -> eng_Latn). Writes runs/ablation/report.md (per-seed pooled errors, mean, std, max - min)
and runs/ablation/results.json; a finished run is not redone on a rerun (its log.jsonl record is reused).
The demo's report links here. Budget: 4 variants x 2 seeds x (STEPS steps + about 1 min start-up, export and eval).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from scripts.common import StageError, recipe_settings
from scripts.demo import RECIPE
from scripts.report import seed_table
from scripts.sweep import run_one

# The ablation compares variants at a fixed step count (not a fitted schedule): equal steps, equal pairs.
STEPS, MINUTES = 600, 15.0

# name -> (recipe, the flags this variant changes)
VARIANTS = {
    "alignment only": (RECIPE, {"mlm-weight": 0.0, "koleo-weight": 0.0}),
    "+ cross-unmasking": (RECIPE, {"koleo-weight": 0.0}),
    "+ KoLeo (demo recipe)": (RECIPE, {}),
    "paper's hyperparameters": ("tiny-paper", {}),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def load_log(path: Path) -> dict[tuple[str, int], dict]:
    """(run name, seed) -> record of runs finished earlier with the same settings."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["name"], r["seed"]): r for r in records}


def run_variant(name: str, seed: int, args: argparse.Namespace, done: dict) -> dict:
    recipe, overrides = VARIANTS[name]
    run_name, flags = f"{slug(name)}_seed{seed}", recipe_settings(recipe, overrides)
    old = done.get((run_name, seed))
    if old and old.get("flags") == flags and old["steps_cap"] == args.steps and not args.force:
        print(f"\n==> [{run_name}] done earlier: pooled error {old['pooled_error_pct']:.2f}%", flush=True)
        return old
    ns = argparse.Namespace(
        data=args.data,
        flores=args.flores,
        root=args.out,
        steps=args.steps,
        minutes=args.minutes,
        seed=seed,
        procs=2,
        pairs=args.pairs,
        extra=[],
    )
    record = {**run_one(run_name, recipe, overrides, ns), "variant": name, "steps_cap": args.steps}
    with open(Path(args.out) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def write_report(out: Path, records: list[dict], args: argparse.Namespace) -> Path:
    errors: dict[str, list[float]] = {}
    for r in records:
        errors.setdefault(r["variant"], []).append(r["pooled_error_pct"])
    ranking = sorted(errors, key=lambda v: statistics.fmean(errors[v]))
    lines = [
        "# MEXMA ablation in small",
        "",
        f"Tiny XLM-R from random init on 2 ZeRO-2 CPU ranks, step cap {args.steps}, wall-clock cap {args.minutes} min "
        f"per run, seeds {args.seeds}; each variant is a recipe of recipes/ and the flags it changes: "
        + "; ".join(f"{n}: `{r}` {json.dumps(o)}" for n, (r, o) in VARIANTS.items() if n in errors)
        + f". Pooled xsim error % (X -> eng_Latn) on the held-out test set `{args.flores}` (devtest). Lower is better.",
        "",
        seed_table(errors),
        "",
        f"Ordering by mean (best first): {' < '.join(ranking)}.",
        "",
        "| run | variant | seed | steps | wall s | final mlm | final cls | final koleo | pooled % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['variant']} | {r['seed']} | {r['steps']} | {r['wall_s']:.0f} | "
            f"{r['final_mlm_loss']:.3f} | {r['final_cls_loss']:.4f} | {r['final_koleo_loss']:.3f} | "
            f"{r['pooled_error_pct']:.2f} |"
        )
    lines += [
        "",
        "The paper's ablation (FLORES-200 xsim, xlm-roberta-large, full data): alignment only 0.15, "
        "+ token-level 0.10, + KoLeo 0.06.",
        "",
    ]
    (out / "results.json").write_text(json.dumps({"records": records, "errors": errors}, indent=1) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python scripts/ablation.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every variant (at least 2)")
    p.add_argument("--steps", type=int, default=STEPS, help="step cap of each run")
    p.add_argument("--minutes", type=float, default=MINUTES, help="wall-clock cap of each run")
    p.add_argument("--pairs", type=int, default=None, help="pairs per optimizer step, 2 ranks together (default: "
                   "the recipes')")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help=f"variants to run (default: all of {list(VARIANTS)})")  # fmt: skip
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--flores", default="data/testset")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--force", action="store_true", help="redo runs finished earlier")
    args = p.parse_args(argv)
    if len(set(args.seeds)) < 2:
        p.error(f"--seeds: at least two distinct seeds for a spread, got {args.seeds}")
    if not (Path(args.data) / "manifest.json").is_file():
        p.error(f"--data {args.data}: no manifest.json (run `make prep` or `make demo` first)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, done = time.perf_counter(), load_log(out / "log.jsonl")
    try:
        records = [run_variant(name, seed, args, done) for seed in args.seeds for name in args.variants]
    except StageError as e:
        print(f"\nmake ablation: error: {e}", file=sys.stderr)
        return 1
    path = write_report(out, records, args)
    print(path.read_text())
    print(f"ablation finished in {(time.perf_counter() - start) / 60:.1f} min; report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
