"""`make demo`: the offline default end to end on a CPU machine, and a report.

    python scripts/demo.py [--total-minutes T] [--minutes M] [--steps N] [--force]

Stages (each prints its command and its progress; outputs under runs/demo/):
  1. prep       python -m data_prep.offline --out data       (skipped by data_prep when nothing changed)
  2. untrained  the recipe's model as training initialises it (same flags and seed) -> untrained-hf/, eval ->
                untrained/ (devtest) and untrained-dev/ (dev)
  3. char3gram  python -m eval --model char3gram                                  -> char3gram/, char3gram-dev/
  4. trained    deepspeed --num_gpus 2 pipeline/train.py --recipe tiny-cpu (recipes/tiny-cpu.json: ZeRO-2 on 2 CPU
                processes), scoring xsim on the dev split every XSIM_EVERY steps (--xsim-every) -> train/, export ->
                trained-hf/, eval -> trained/
  5. mine       python -m scripts.mine_demo: bitext mining F1 on devtest's shuffled X and English sides, for the
                untrained, trained and char3gram models -> mine-{untrained,trained,char3gram}/
  6. report     runs/demo/report.md + losses.png + errors.png + xsim.png (scripts/report.py)

Budget: the script aims to finish within --total-minutes (17; `make demo` adds the venv set-up, 1-3 min from a
fresh clone). The one training gets every minute the target leaves after the stages before it, its start-up, export
and evaluation (estimated by the untrained model's evaluation, same model and sentences); --minutes sets it instead.
The budget is kept in runs/demo/budget.json so a rerun after an interruption trains with the same command. The
training sizes its lr schedule to its budget from its own measured speed (train.py --fit-to-minutes), so a slow and
a fast machine both finish a whole warmup + cosine; --steps is only the upper bound of that schedule.

The training scores xsim on data/testset's dev split as it goes (the learning curve of the report); the devtest
split, which the final table reports, stays held out. The paper's hyperparameters on the same model are a variant of
`make ablation` (scripts/ablation.py), which the report links to. A stage whose inputs (command, recipe, data
manifest, upstream stage) are unchanged since it last succeeded is skipped, so a rerun after an interruption picks up
where it stopped (training resumes from its last checkpoint); --force redoes everything. docs/demo.md has the
evidence for the recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from scripts.common import (
    PY,
    StageError,
    build_untrained,
    eval_cmd,
    export_cmd,
    read_stamp,
    recipe_settings,
    run_stage,
    train_cmd,
    write_stamp,
)
from scripts.report import ReportError, ablation_note, load_results, pooled, write_demo_report

RECIPE = "tiny-cpu"  # recipes/tiny-cpu.json: the model, batch and hyperparameters (docs/demo.md has the evidence)
# xsim during training: every XSIM_EVERY steps on the dev split (129 sentences x 30 languages + English on the
# default catalogues; a few seconds per evaluation on 2 CPU ranks, inside the wall-clock budget).
XSIM_EVERY, XSIM_SPLIT = 50, "dev"
STEPS, FIT_AFTER = 5000, 10  # STEPS: upper bound of the fitted schedule (train.py --fit-to-minutes)
TOTAL_MINUTES = 17.0  # this script's target; `make demo` adds the venv set-up (1-3 minutes from a fresh clone)
# Outside the training's --max-minutes: the launcher, two processes importing torch/DeepSpeed, the data index and the
# final checkpoint (32 s on the slower 2-core machine: 84 s for a 40-step run whose steps took 52 s) + export.
START_S, EXPORT_S, EVAL_S, REPORT_S = 40.0, 15.0, 120.0, 15.0  # EVAL_S: when the untrained eval was not timed here
MIN_MINUTES = 2.0  # below this the training has no schedule to fit: the demo then runs over its target and says so
MODEL_SHAPE_FLAGS = ("model", "num-layers", "hidden-size", "num-heads", "ffn-size", "max-positions")
STAGES = ("prep", "untrained", "char3gram", "trained", "mine", "report")
ABLATION_REPORT = "runs/ablation/report.md"  # `make ablation`: the paper's hyperparameters on this model, and more


class Demo:
    """The stages of the demo over one output directory, with skip-when-unchanged stamps."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out)
        self.logs = self.out / "logs"
        self.stages: dict[str, float] = {}
        self.start = time.perf_counter()
        self.seconds_file = self.out / "stage_seconds.json"  # seconds of each stage when it last ran (budget input)
        self.manifest = Path(args.data) / "prepared" / "manifest.json"
        self.prepared, self.flores = str(Path(args.data) / "prepared"), str(Path(args.data) / "testset")

    def key(self, **parts) -> dict:
        """A stage's identity: its own parts + the data it reads (manifest hash)."""
        return {"manifest_sha256": hashlib.sha256(self.manifest.read_bytes()).hexdigest(), **parts}

    def cached(self, name: str, out: Path, key: dict, produce) -> bool:
        """Run produce() unless out/.stage.json equals key (then print 'up to date'); -> True when it ran."""
        stamp = out / ".stage.json"
        if not self.args.force and read_stamp(stamp) == key:
            print(f"\n==> [{name}] up to date ({out}); --force redoes it", flush=True)
            return False
        start = time.perf_counter()
        produce()
        write_stamp(stamp, key)
        self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start
        write_stamp(self.seconds_file, {**(read_stamp(self.seconds_file) or {}), name: round(self.stages[name], 1)})
        return True

    def minutes(self) -> float:
        """The training's wall-clock budget: --minutes, else the one budget.json holds for this --total-minutes,
        else what the target leaves after the stages so far and the training's start-up, export and evaluation."""
        a, path = self.args, self.out / "budget.json"
        if a.minutes:
            return a.minutes
        kept = read_stamp(path)
        if kept and kept.get("total_minutes") == a.total_minutes and not a.force:
            return kept["minutes"]
        eval_s = (read_stamp(self.seconds_file) or {}).get("eval untrained", EVAL_S)
        spent = time.perf_counter() - self.start
        left = a.total_minutes * 60 - spent - START_S - EXPORT_S - eval_s - REPORT_S
        minutes = round(max(MIN_MINUTES, left / 60), 2)
        note = "" if left / 60 >= MIN_MINUTES else f" (the floor: the demo will run past {a.total_minutes} min)"
        print(
            f"\n==> [budget] {spent / 60:.1f} of {a.total_minutes} min spent; the training gets {minutes} min{note} "
            f"(it also costs ~{START_S:.0f} s start-up, {EXPORT_S:.0f} s export and an evaluation of ~{eval_s:.0f} s, "
            "the untrained model's); --minutes overrides",
            flush=True,
        )
        write_stamp(path, {"total_minutes": a.total_minutes, "minutes": minutes, "spent_s": round(spent, 1),
                           "eval_s": eval_s})  # fmt: skip
        return minutes

    def prep(self) -> None:
        self.stages["prep"] = run_stage(
            "prep", [PY, "-m", "data_prep.offline", "--out", self.args.data], self.logs / "prep.log"
        )

    def evaluate(self, name: str, model: str, out: Path, key: dict, split: str = "devtest") -> None:
        cmd = eval_cmd(model, self.flores, out, split=split)
        self.cached(f"eval {name}", out, key, lambda: run_stage(f"eval {name}", cmd, self.logs / f"eval_{name}.log"))

    def baseline(self, name: str, model: str, key: dict) -> None:
        """A model that does not train: on devtest (the final table) and on the dev split (the curves' levels)."""
        self.evaluate(name, model, self.out / name, key)
        self.evaluate(f"{name} {XSIM_SPLIT}", model, self.out / f"{name}-{XSIM_SPLIT}", key, split=XSIM_SPLIT)

    def untrained(self) -> None:
        hf = self.out / "untrained-hf"
        flags = recipe_settings(RECIPE)
        shape = {k: v for k, v in flags.items() if k in MODEL_SHAPE_FLAGS}  # what the initial weights depend on
        key = self.key(shape=shape, seed=self.args.seed)

        def build():
            print(f"\n==> [untrained] the {RECIPE} model at its training initialisation (seed {self.args.seed}): {hf}")
            build_untrained(self.prepared, hf, RECIPE, self.args.seed)

        self.cached("untrained", hf, key, build)
        self.baseline("untrained", str(hf), {**key, "stage": "eval"})

    def train(self, label: str = "trained", run_name: str = "train") -> None:
        """Train (fresh when the command or the recipe changed, else resume/skip), export, evaluate."""
        a, run = self.args, self.out / run_name
        xsim = ["--xsim-every", str(XSIM_EVERY), "--xsim-data", self.flores, "--xsim-split", XSIM_SPLIT]
        xsim += ["--fit-to-minutes", "--fit-after", str(FIT_AFTER)]
        cmd = train_cmd(
            self.prepared,
            run,
            RECIPE,
            steps=a.steps,
            minutes=self.minutes(),
            seed=a.seed,
            pairs_per_step=a.pairs,
            extra=xsim,
        )
        # the port is drawn per launch; the recipe's content, not only its name
        key = self.key(cmd=[c for c in cmd if "master_port" not in c][4:], recipe=recipe_settings(RECIPE))

        def fit():
            if read_stamp(run / ".stage.json") not in (None, key) or a.force:
                shutil.rmtree(run, ignore_errors=True)  # a different recipe: never resume someone else's run
            run_stage(f"train {label}", cmd, self.logs / f"train_{label}.log")

        self.cached(f"train {label}", run, key, fit)
        hf = self.out / f"{label}-hf"
        self.cached(
            f"export {label}",
            hf,
            {**key, "stage": "export"},
            lambda: run_stage(f"export {label}", export_cmd(run, hf), self.logs / f"export_{label}.log"),
        )
        self.evaluate(label, str(hf), self.out / label, {**key, "stage": "eval"})

    def mine(self) -> None:
        """Mining F1 of each model there is (scripts/mine_demo.py), skipped when its command and model are unchanged."""
        models = {"untrained": self.out / "untrained-hf", "trained": self.out / "trained-hf", "char3gram": None}
        for label, hf in models.items():
            if hf is not None and not hf.is_dir():
                print(f"\n==> [mine {label}] skipped: no {hf} (its stage has not run)", flush=True)
                continue
            out, log = self.out / f"mine-{label}", self.logs / f"mine_{label}.log"
            cmd = [PY, "-m", "scripts.mine_demo", "--model", str(hf or label), "--flores", self.flores]
            cmd += ["--out", str(out)]
            key = self.key(cmd=cmd[1:], model=read_stamp(hf / ".stage.json") if hf else label)
            self.cached(f"mine {label}", out, key, lambda c=cmd, n=f"mine {label}", lg=log: run_stage(n, c, lg))

    def report(self) -> Path:
        settings = {"trained": self.settings()}
        write_stamp(self.out / "demo_state.json", {"settings": settings, "stages": self.stages})
        evals = {label: self.out / label for label in ("untrained", "trained", "char3gram")}
        dev = {label: self.out / f"{label}-{XSIM_SPLIT}" for label in ("untrained", "char3gram")}
        return write_demo_report(
            self.out, self.manifest, {"trained": self.out / "train"}, evals, settings, self.stages, dev,
            ablation_note(Path(ABLATION_REPORT)),
        )  # fmt: skip

    def settings(self) -> dict:
        a, flags = self.args, recipe_settings(RECIPE)
        pairs = a.pairs or flags.get("batch-pairs", 0) * 2 * flags.get("grad-accum", 1)
        return {
            "recipe": f"{RECIPE} (recipes/{RECIPE}.json)",
            **flags,
            "pairs per step": f"{pairs} (2 ranks x {pairs // 2})",
            "wall-clock budget (min)": self.minutes(),
            "schedule": f"fitted to the budget from the measured speed after {FIT_AFTER} steps (upper bound {a.steps})",
            "seed": a.seed,
            "xsim during training": f"every {XSIM_EVERY} steps, {XSIM_SPLIT} split",
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="data_prep.offline --out (prepared/ and testset/ under it)")
    p.add_argument("--out", default="runs/demo", help="output directory of the demo")
    p.add_argument("--total-minutes", type=float, default=TOTAL_MINUTES, help="this script's wall-clock target")
    p.add_argument("--minutes", type=float, default=None, help="each training's budget (default: from the target)")
    p.add_argument("--steps", type=int, default=STEPS, help="upper bound of each training's fitted schedule")
    p.add_argument("--pairs", type=int, default=None, help="pairs per optimizer step, 2 ranks together (default: "
                   "the recipe's)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of init, sampler and masking")
    p.add_argument("--force", action="store_true", help="redo every stage even when up to date")
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)}, run "
        "in this order (a later call reuses what an earlier one finished)",
    )
    args = p.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        p.error(f"--stages: unknown {unknown}; choose from {','.join(STAGES)}")
    for flag, value in (("--steps", args.steps), ("--total-minutes", args.total_minutes), ("--pairs", args.pairs or 2)):
        if value <= 0:
            p.error(f"{flag} must be > 0, got {value}")
    if args.pairs is not None and args.pairs % 2:
        p.error(f"--pairs must be even (split over 2 ranks), got {args.pairs}")
    if args.minutes is not None and args.minutes <= 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    demo = Demo(args)
    steps = {
        "prep": demo.prep,
        "untrained": demo.untrained,
        "char3gram": lambda: demo.baseline("char3gram", "char3gram", demo.key(stage="c3")),
        "trained": demo.train,
        "mine": demo.mine,
        "report": demo.report,
    }
    try:
        for name in args.stages:
            steps[name]()
    except (StageError, ReportError) as e:
        print(f"\nmake demo: error: {e}", file=sys.stderr)
        return 1
    if "report" not in args.stages:
        print(f"stages {args.stages} done in {(time.perf_counter() - start) / 60:.1f} min")
        return 0
    path = demo.out / "report.md"
    summary = {
        label: pooled(load_results(demo.out / label))
        for label in ("untrained", "trained", "char3gram")
        if (demo.out / label).is_dir()
    }
    print("\npooled xsim error %: " + json.dumps({k: round(v, 2) for k, v in summary.items()}))
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
