"""Golden losses: a fixed small training run whose per-step numbers are kept in the repository and compared in CI.

    python -m pipeline.golden --write     # run it and (re)write tests/pipeline/golden_losses.json
    python -m pipeline.golden             # run it and compare with the file (exit 1 and the first mismatches)

The run: 2 ranks (torchrun, gloo, DeepSpeed ZeRO-2 fp32 on the CPU), 20 optimizer steps, seed 0, a 2-layer
hidden-64 encoder with a 1-layer head, 8 pairs per rank, every step logged; the data is pipeline/data/synthetic.py's
dataset (a tokenizer trained on the spot, no download). Per step the file holds the total loss, each term (mlm, cls,
koleo), the gradient norm and the lr.

Tolerance (`TOLERANCE`, relative to the golden value): on one machine and one software stack the numbers repeat bit
for bit (gloo's 2-rank all-reduce adds in a fixed order, one thread per rank). Across torch / BLAS versions and
CPUs, fp32 reductions may sum in another order: each reordered sum moves by a few ulp (~1e-7 relative), and 20 AdamW
steps carry such differences into the weights and the later losses. Measured: two threads per rank instead of one (a
different blocking of every matrix product) moves the loss terms by at most 1.3e-7 and the gradient norm by 7e-8
over the 20 steps. The loss terms get 2e-5 and the gradient norm 1e-4 (over a hundred times that drift), still fifty
times tighter than a 1.001 scaling of a term, which the test must catch. The lr is a pure function of the step: 1e-9.
A term scaled inside the total only (KoLeo's 0.01 x 1.001 moves the total by 2e-6 relative) is caught by a check
that needs no golden value: each step's total must be the weighted sum of its logged terms to 1e-6 (fp32 rounding
of the means: 6e-8 measured).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets

from pipeline.data.synthetic import make_prepared
from pipeline.model.mexma import ModelConfig
from pipeline.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "pipeline" / "golden_losses.json"
KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "grad_norm", "lr")
TOLERANCE = {"loss": 2e-5, "mlm_loss": 2e-5, "cls_loss": 2e-5, "koleo_loss": 2e-5, "grad_norm": 1e-4, "lr": 1e-9}
SUM_TOLERANCE = 1e-6
RANKS, STEPS, SEED = 2, 20, 0
FLAGS = [
    *("--max-steps", str(STEPS), "--seed", str(SEED), "--batch-pairs", "8", "--grad-accum", "1"),
    *("--lr", "5e-4", "--model", "tiny", "--num-layers", "2", "--hidden-size", "64", "--num-heads", "2"),
    *("--ffn-size", "128", "--head-layers", "1", "--head-heads", "2", "--head-ffn", "128"),
    *("--log-every", "1", "--save-every", "0", "--valid-every", "-1", "--wandb", "off", "--verify", "size"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path) -> list[dict]:
    """Train the golden configuration under `work` -> one {key: value} per step."""
    datasets.disable_progress_bars()
    data = make_prepared(work / "data", seed=SEED)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET", "MEXMA_KERNELS"):
        env.pop(key, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS)]
    launcher += ["--master_port", str(_free_port())]
    ds_config = str(ROOT / "ds_configs" / "zero2_cpu_fp32.json")
    out = work / "run"
    cmd = [*launcher, str(ROOT / "pipeline" / "train.py"), "--data", str(data), "--output-dir", str(out)]
    proc = subprocess.run([*cmd, "--ds-config", ds_config, *FLAGS], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the golden run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return [{"step": r["step"], **{k: r[k] for k in KEYS}} for r in read_metrics(out)]


def weighted_sum(record: dict) -> float:
    """loss = w_mlm x mlm + w_cls x cls + w_koleo x koleo, with the golden run's (default) weights."""
    cfg = ModelConfig()
    return (
        cfg.mlm_weight * record["mlm_loss"]
        + cfg.cls_weight * record["cls_loss"]
        + cfg.koleo_weight * record["koleo_loss"]
    )


def compare(got: list[dict], want: list[dict]) -> list[str]:
    """Mismatches as 'step S key: got G, golden W (relative difference D > tolerance T)', and steps whose total is
    not the weighted sum of its terms (SUM_TOLERANCE: fp32 rounding of the means, measured 6e-8)."""
    if [r["step"] for r in got] != [r["step"] for r in want]:
        return [f"steps {[r['step'] for r in got]} != golden {[r['step'] for r in want]}"]
    out = []
    for g in got:
        diff = abs(g["loss"] - weighted_sum(g)) / abs(g["loss"])
        if diff > SUM_TOLERANCE:
            out.append(f"step {g['step']} loss: {g['loss']!r} is not the weighted sum of its terms {weighted_sum(g)!r}")
    for g, w in zip(got, want, strict=True):
        for key in KEYS:
            diff = abs(g[key] - w[key]) / max(abs(w[key]), 1e-12)
            if diff > TOLERANCE[key]:
                out.append(
                    f"step {g['step']} {key}: got {g[key]!r}, golden {w[key]!r} "
                    f"(relative difference {diff:.2e} > {TOLERANCE[key]:.0e})"
                )
    return out


def read_golden(path: Path = GOLDEN) -> list[dict]:
    return json.loads(Path(path).read_text())["steps"]


def write_golden(steps: list[dict], path: Path = GOLDEN) -> None:
    config = {"ranks": RANKS, "flags": FLAGS, "ds_config": "ds_configs/zero2_cpu_fp32.json", "tolerance": TOLERANCE}
    doc = {"regenerate": "python -m pipeline.golden --write", "config": config, "steps": steps}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.golden", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.relative_to(ROOT)}")
    parser.add_argument("--file", type=Path, default=GOLDEN, help="the golden file (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mexma-golden-") as tmp:
        steps = run(Path(tmp))
    if args.write:
        write_golden(steps, args.file)
        print(f"wrote {args.file}: {len(steps)} steps")
        return 0
    problems = compare(steps, read_golden(args.file))
    print("\n".join(problems[:20]) if problems else f"{len(steps)} steps match {args.file}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
