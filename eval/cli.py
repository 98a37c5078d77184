"""``python -m eval``: xsim / xsim++ of a sentence encoder on a FLORES-200-layout directory, or BUCC / Tatoeba.

python -m eval --model MODEL --flores DIR --split devtest --langs all --out OUTDIR
python -m eval --task bucc --bucc DIR --pair de-en [--split test] --model MODEL --out OUTDIR
python -m eval --task tatoeba --tatoeba DIR --langs deu,fra --model MODEL --out OUTDIR
torchrun --nproc_per_node 2 -m eval ...     (each rank encodes a share; rank 0 gathers and scores)

A training output / checkpoint directory is exported once by rank 0 to OUTDIR/exported_model (on the file system
every node reads, not a node-local temp dir) and kept there.
"""

from __future__ import annotations

import argparse
import sys
import time

from eval import shares
from eval.data import load_flores
from eval.encode import BUILTIN, POOLINGS
from eval.report import markdown, write_all
from eval.score import Scorer, score_nway, score_sets
from eval.sharded import encode_share
from eval.xsim import MARGINS
from runtime import collectives, devices
from runtime.env import apply_defaults

TASKS = ("xsim", "bucc", "tatoeba")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    builtin = ", ".join(BUILTIN)
    p.add_argument("--model", required=True, help=f"HF dir / hub name, training or checkpoint dir, or {builtin}")
    p.add_argument("--tokenizer", help="tokenizer dir / hub name, when --model's directory has none")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="a training checkpoint's files may need more than the weights-only unpickler (runs their code)",
    )
    p.add_argument("--task", default="xsim", choices=TASKS, help="xsim (default), bucc or tatoeba")
    p.add_argument("--flores", help="FLORES-200-layout root: {dev,devtest}/{lang}.{split} (--task xsim)")
    p.add_argument("--split", help="sub-directory and file suffix (default devtest); BUCC: evaluated split (test)")
    p.add_argument("--bucc", help="BUCC 2018 directory: {pair}.{split}.{lang}, {pair}.{split}.gold (--task bucc)")
    p.add_argument("--pair", help="BUCC pairs, comma-separated (de-en,fr-en,ru-en,zh-en)")
    p.add_argument("--bucc-threshold-split", default="training", help="BUCC split whose gold sets the threshold")
    p.add_argument("--tatoeba", help="LASER Tatoeba directory: tatoeba.{xxx}-eng.{xxx|eng} (--task tatoeba)")
    p.add_argument("--langs", default="all", help="comma-separated source languages, or 'all' (default)")
    p.add_argument("--target", default="eng_Latn", help="target language (default eng_Latn: X -> English)")
    p.add_argument("--nway", action="store_true", help="every ordered pair of --langs and --target (LASER --nway)")
    p.add_argument("--margin", choices=MARGINS, help="margin (default ratio; tatoeba: absolute, LASER's 1-NN)")
    p.add_argument("--k", type=int, default=4, help="neighbours in the margin (default 4)")
    p.add_argument(
        "--index-comparison",
        action="store_true",
        help="count an error by row index, not by target text (LASER's --index-comparison)",
    )
    p.add_argument("--no-xsimpp", action="store_true", help="skip xsim++ even when the augmented files exist")
    p.add_argument("--pooling", default="cls", choices=POOLINGS, help="sentence embedding (default cls)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per encoder batch")
    p.add_argument("--max-length", type=int, default=512, help="truncate sentences to this many tokens")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="encoding/scoring device")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="encoder precision (auto: bf16/fp16 on GPUs, fp32 on CPU)",
    )
    p.add_argument("--block-mb", type=int, default=256, help="memory bound of one similarity block, MiB")
    p.add_argument("--out", required=True, help="output directory for results.{json,md,csv,png}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for flag, value, low in (
        ("--k", args.k, 1),
        ("--batch-tokens", args.batch_tokens, 1),
        ("--max-length", args.max_length, 1),
        ("--block-mb", args.block_mb, 1),
    ):
        if value < low:
            p.error(f"{flag} must be >= {low}, got {value}")
    needs = {"xsim": "flores", "bucc": "bucc", "tatoeba": "tatoeba"}[args.task]
    if getattr(args, needs) is None:
        p.error(f"--task {args.task} needs --{needs}")
    args.split = args.split or {"bucc": "test"}.get(args.task, "devtest")
    args.margin = args.margin or ("absolute" if args.task == "tatoeba" else "ratio")
    return args


def load_data(args) -> tuple[list[str], dict[str, list[str]], object]:
    """Source languages, the sentence sets to encode (languages + augmented target) and the xsim++ files."""
    return load_flores(args.flores, args.split, args.langs, args.target, args.nway, not args.no_xsimpp)


def score(args, emb: dict, texts: dict, langs: list[str], aug) -> dict:
    scorer = Scorer(args.margin, args.k, args.index_comparison, devices.device_for(args.device), args.block_mb * 2**20)
    results = {
        "model": args.model,
        "flores": str(args.flores),
        "split": args.split,
        "target": args.target,
        "margin": args.margin,
        "k": args.k,
        "pooling": args.pooling,
        "comparison": "index" if args.index_comparison else "text",
    }
    if args.nway:
        nway = score_nway(scorer, emb, texts, langs)
        results.update(languages=nway["languages"], average=nway["average"], nway=nway)
    else:
        results.update(score_sets(scorer, emb, texts, langs, args.target, aug))
    return results


def run(args) -> int:
    if args.task != "xsim":
        from eval import bucc, tatoeba

        return {"bucc": bucc, "tatoeba": tatoeba}[args.task].run(args)
    rank, size = collectives.init_eval()
    langs, texts, aug = load_data(args)  # every rank validates, so a bad input stops all ranks alike
    n = len(texts[args.target])
    if args.margin != "absolute" and args.k > n:  # checked before encoding rather than after
        raise ValueError(f"--k {args.k}: the margin needs k <= {n}, the sentences per language")
    local, encode_s, n_local = encode_share(args, texts, rank, size)
    emb = shares.gather(local)
    if rank != 0:
        return 0
    start = time.perf_counter()
    results = score(args, emb, texts, langs, aug)
    results["timing"] = {
        "world_size": size,
        "encode_s_rank0": round(encode_s, 3),
        "sentences_per_s_rank0": round(n_local / max(encode_s, 1e-9), 1),
        "score_s": round(time.perf_counter() - start, 3),
    }
    paths = write_all(results, args.out)
    print(markdown(results))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    args = parse_args(argv)
    try:
        return run(args)
    except ValueError as err:  # DataError, ModelError and argument checks (e.g. --k above the sentence count)
        print(f"python -m eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        collectives.finish()
