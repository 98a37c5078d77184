"""`python -m data_prep`: build a prepared dataset directory (see docs/data_prep.md).

One machine: `--workers N` processes. Several machines on a shared file system: the same command on each, with
`--machines M --machine-rank R`. A Slurm cluster: `--executor slurm --slurm-partition P`. SIGTERM or Ctrl-C ends the
engine's processes with the command (data_prep/signals.py) and keeps the work directory: exit 128 + the signal."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from runtime.env import apply_defaults
from runtime.hub import check_hub_name

from .lock import LockError
from .prepare import PrepConfig, prepare
from .readers import UNKNOWN_LANG, SourceError
from .signals import Stopped, report_stop, stop_on_signals
from .sources import FORMATS, ReadOptions

OFFLINE_TOKENIZERS = "--train-tokenizer N (one trained on the corpus) or --tokenizer DIR (a local tokenizer dir)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="FORMAT:PATH",
        help=f"input corpus, repeatable; FORMAT one of {', '.join(FORMATS)}; PATH may be a glob (quoted), sorted",
    )
    p.add_argument("--out", required=True, help="output directory")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="pretrained HF tokenizer (local path or hub name)")
    tok.add_argument(
        "--train-tokenizer",
        type=int,
        metavar="VOCAB_SIZE",
        help="train a SentencePiece-Unigram tokenizer with this many ids on the kept text",
    )
    p.add_argument(
        "--tokenizer-max-sentences",
        type=int,
        default=1_000_000,
        help="sentences used to train the tokenizer (a sample of the pairs by hash, balanced by --tokenizer-alpha)",
    )
    p.add_argument(
        "--tokenizer-alpha",
        type=float,
        default=1.0,
        help="tokenizer sample: language pair p's share ~ pairs_p ** alpha (training's --lang-alpha rule; 1 = "
        "proportional, 0 = the same for every pair)",
    )
    p.add_argument("--max-tokens", type=int, default=200, help="max ids per side incl. <s> and </s>; longer truncated")
    p.add_argument("--max-chars", type=int, default=1000, help="skip pairs with a side longer than this (characters)")
    p.add_argument("--max-ratio", type=float, default=6.0, help="skip pairs whose character-length ratio exceeds this")
    p.add_argument("--valid-fraction", type=float, default=0.01, help="share of unique pairs held out, by pair hash")
    p.add_argument("--min-valid", type=int, default=8, help="minimum valid pairs (smallest hashes)")
    p.add_argument("--max-pairs", type=int, help="stop after reading this many records")
    p.add_argument(
        "--exclude-flores",
        metavar="DIR",
        help="FLORES-layout test set whose sentences (any language) must not occur in training",
    )
    p.add_argument("--src-lang", default=UNKNOWN_LANG, help="src language where a source does not name it")
    p.add_argument("--trg-lang", default=UNKNOWN_LANG, help="trg language where a source does not name it")
    p.add_argument("--src-col", default="src", help="column of the source text (tsv/csv header, jsonl, hf, parquet)")
    p.add_argument("--trg-col", default="trg", help="column of the target text")
    p.add_argument("--src-lang-col", default="src_lang", help="column of the source language (optional in the data)")
    p.add_argument("--trg-lang-col", default="trg_lang", help="column of the target language (optional in the data)")
    p.add_argument("--score-col", default="", help="alignment score column (default: laser_score or score)")
    p.add_argument("--min-score", type=float, help="keep pairs whose score is at least this (others: low_score)")
    p.add_argument("--flores-split", default="dev", help="split read from flores: sources")
    p.add_argument("--flores-langs", default="", help="comma-separated languages of flores: sources (empty: all)")
    p.add_argument("--gettext-domains", default="", help="comma-separated catalogue names of gettext: sources")
    p.add_argument("--workers", type=int, default=0, help="processes on this machine (0: all cores)")
    p.add_argument("--partitions", type=int, help="dedup/encode tasks = shards per split (default: from input size)")
    p.add_argument("--task-mb", type=float, help="input MB per read task (default: from input size)")
    p.add_argument("--machines", type=int, default=1, help="machines sharing the build (shared file system)")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's number in [0, --machines)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local", help="local processes or Slurm arrays")
    p.add_argument("--slurm-partition", help="Slurm partition (--executor slurm)")
    p.add_argument("--slurm-time", default="12:00:00", help="Slurm time limit per task (--executor slurm)")
    p.add_argument("--slurm-cpus", type=int, default=1, help="CPUs per Slurm task (--executor slurm)")
    p.add_argument("--slurm-mem-gb", type=int, default=4, help="memory per CPU of a Slurm task, GB (--executor slurm)")
    p.add_argument("--slurm-qos", default="", help="Slurm QOS (--executor slurm; empty: the partition's default)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    split = lambda s: tuple(x for x in s.split(",") if x)
    read = ReadOptions(
        args.src_lang,
        args.trg_lang,
        args.flores_split,
        split(args.flores_langs),
        split(args.gettext_domains),
        (args.src_col, args.trg_col, args.src_lang_col, args.trg_lang_col),
        args.score_col,
        args.min_score,
    )
    slurm = {
        "partition": args.slurm_partition,
        "time": args.slurm_time,
        "cpus_per_task": args.slurm_cpus,
        "mem_per_cpu_gb": args.slurm_mem_gb,
        "qos": args.slurm_qos,
    }
    if args.executor == "slurm" and not args.slurm_partition:
        raise ValueError("--executor slurm needs --slurm-partition")
    return PrepConfig(
        sources=args.source,
        out=args.out,
        tokenizer=args.tokenizer,
        train_tokenizer=args.train_tokenizer,
        tokenizer_max_sentences=args.tokenizer_max_sentences,
        tokenizer_alpha=args.tokenizer_alpha,
        max_tokens=args.max_tokens,
        max_chars=args.max_chars,
        max_ratio=args.max_ratio,
        valid_fraction=args.valid_fraction,
        min_valid=args.min_valid,
        max_pairs=args.max_pairs,
        exclude_flores=args.exclude_flores,
        read=read,
        workers=args.workers,
        partitions=args.partitions,
        task_mb=args.task_mb,
        machines=args.machines,
        machine_rank=args.machine_rank,
        executor=args.executor,
        slurm=slurm if args.executor == "slurm" else {},
        force=args.force,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    apply_defaults()
    if args.quiet:  # read when `datasets` is imported, here and in the processes it starts
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    try:
        if args.tokenizer:
            check_hub_name(args.tokenizer, "--tokenizer", OFFLINE_TOKENIZERS)
        with stop_on_signals():
            manifest = prepare(config_from_args(args))
    except (SourceError, ValueError, FileNotFoundError, FileExistsError, LockError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        return report_stop(args.out, e)
    if "submitted" in manifest:
        print(f"{args.out}: submitted; the last Slurm job ({manifest['submitted']}) puts the output in place")
        return 0
    if "counts" not in manifest:
        print(f"{args.out}: built by the other machines")
        return 0
    c = manifest["counts"]
    print(
        f"{args.out}: read {c['read']}, kept {c['kept']}, skipped {sum(c['skipped'].values())} "
        f"{c['skipped']}; rows {manifest['rows']}; vocab {manifest['tokenizer']['vocab_size']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
