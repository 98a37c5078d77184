"""``python -m eval.mine``: margin-based bitext mining with the command line and output of LASER's ``mine_bitexts``.

python -m eval.mine SRC TRG --src-lang de --trg-lang en --output mined.tsv \\
    --src-embeddings src.emb --trg-embeddings trg.emb --dim 1024 [--fp16] \\
    --mode mine --retrieval max --margin ratio -k 4 [--threshold 1.06] [--unify]
python -m eval.mine SRC TRG ... --model MODEL_DIR          (embeds the texts itself; export or checkpoint)
torchrun --nproc_per_node N -m eval.mine ...               (ranks embed shares and search shares of blocks)
python -m eval.mine --bench [--model MODEL_DIR]            (search and embedding throughput)

Output (``--output``): ``mine``: ``score <tab> src <tab> trg`` per pair in LASER's order; ``score``: the same for
line i of SRC with line i of TRG; ``search``: the best target sentence for every source line. A JSON summary
(counts, threshold, timings) goes to ``--summary`` (default OUTPUT.json). Search is exact by default (blocked
GEMM, memory bounded by --block); ``--index`` uses an approximate faiss index for very large sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from eval import shares
from eval.knn import DEFAULT_BLOCK, DEFAULT_CACHE_BYTES, faiss_or_none, knn_exact, merge_ranks, missing_faiss_message
from eval.mine_io import (
    MineError,
    as_float32,
    as_float64,
    file_key,
    load_embeddings,
    read_side,
    unique_rows,
    write_lines,
    write_pairs,
    write_summary,
)
from eval.mining import MARGINS, MODES, RETRIEVALS, mine, row_cosines, score_aligned, search
from runtime import collectives, devices
from runtime.env import apply_defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.mine", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("src", nargs="?", help="source language corpus, one sentence per line (plain, gz, xz, zst)")
    p.add_argument("trg", nargs="?", help="target language corpus")
    p.add_argument("--src-lang", help="source language id")
    p.add_argument("--trg-lang", help="target language id")
    p.add_argument("--output", help="output file")
    p.add_argument("--summary", help="JSON summary (default OUTPUT.json)")
    p.add_argument("--threshold", type=float, default=0.0, help="max retrieval: keep scores above this (default 0)")
    p.add_argument("--mode", choices=MODES, help="execution mode")
    p.add_argument("-k", "--neighborhood", type=int, default=4, help="neighbourhood size (default 4)")
    p.add_argument("--margin", choices=MARGINS, default="ratio", help="margin function (default ratio)")
    p.add_argument("--retrieval", choices=RETRIEVALS, default="max", help="retrieval strategy (default max)")
    p.add_argument("--unify", action="store_true", help="deduplicate sentences before embedding, keep the mapping")
    p.add_argument("--encoding", default="utf-8", help="accepted for LASER compatibility; only utf-8 is read")
    p.add_argument("--gpu", action="store_true", help="accepted for LASER compatibility (see --device)")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    p.add_argument("--src-embeddings", help="precomputed source embeddings (raw float32/float16 rows)")
    p.add_argument("--trg-embeddings", help="precomputed target embeddings")
    p.add_argument("--dim", type=int, default=1024, help="embedding dimension of the precomputed files")
    p.add_argument("--fp16", action="store_true", help="embeddings are float16 (precomputed files; the --model cache)")
    p.add_argument("--model", help="embed the texts with this model (HF dir, training output, checkpoint, char3gram)")
    p.add_argument("--tokenizer", help="tokenizer dir when --model has none")
    p.add_argument("--trust-checkpoint", action="store_true", help="as python -m eval --trust-checkpoint")
    p.add_argument("--pooling", default="cls", choices=("cls", "mean", "sentence-transformers"))
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per encoder batch")
    p.add_argument("--max-length", type=int, default=512, help="truncate sentences to this many tokens")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"), help="encoder precision")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="encoding/search device")
    p.add_argument("--cache-dir", help="--model embeddings, --index indexes; reused (default OUTPUT.cache)")
    p.add_argument("--chunk", type=int, default=2**16, help="sentences per embedding shard (default 65536)")
    p.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="rows per search block on each side (4096)")
    p.add_argument(
        "--cache-mb", type=int, default=DEFAULT_CACHE_BYTES >> 20, help="keep the normalised target side up to this"
    )
    p.add_argument("--index", help="approximate search: a faiss index_factory string, e.g. IVF4096,PQ64")
    p.add_argument("--index-sample", type=int, help="rows to train the index on (default 262144)")
    p.add_argument("--nprobe", type=int, default=16, help="inverted lists visited per query (default 16)")
    p.add_argument("--rerank", type=int, default=4, help="index candidates per neighbour, rescored exactly (4)")
    p.add_argument("--bench", action="store_true", help="print search (and --model embedding) sentences/s")
    p.add_argument("--bench-sizes", default="1e5,1e6", help="sentences per side for --bench (default 1e5,1e6)")
    p.add_argument("--bench-queries", type=int, default=8192, help="--bench: queries timed per size (8192)")
    p.add_argument("--bench-parts", default="exact,approximate,recall", help="--bench: which measurements")
    p.add_argument("--bench-embed-sentences", type=int, default=2048, help="--bench --model: sentences to embed")
    args = p.parse_args(argv)
    if not args.bench:
        args.index_sample = args.index_sample or 2**18
        _check_args(p, args)
    return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("src", "trg", "src_lang", "trg_lang", "output", "mode"):
        if getattr(args, name) is None:
            p.error(f"{'--' + name.replace('_', '-') if name not in ('src', 'trg') else name} is required")
    precomputed = args.src_embeddings is not None or args.trg_embeddings is not None
    if precomputed == (args.model is not None):
        p.error("give either --src-embeddings and --trg-embeddings, or --model")
    if precomputed and (args.src_embeddings is None or args.trg_embeddings is None):
        p.error("--src-embeddings and --trg-embeddings go together")
    for flag, value in (
        ("-k", args.neighborhood),
        ("--dim", args.dim),
        ("--block", args.block),
        ("--chunk", args.chunk),
        ("--index-sample", args.index_sample),
        ("--nprobe", args.nprobe),
        ("--rerank", args.rerank),
    ):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.encoding.lower().replace("-", "") != "utf8":
        p.error(f"--encoding {args.encoding}: only utf-8 is supported")


def log(args, message: str) -> None:
    if args.verbose:
        print(f" - {message}", file=sys.stderr)


def cache_dir(args) -> Path:
    return Path(args.cache_dir or f"{args.output}.cache")


def embeddings(args, src, trg, rank: int, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of both sides (the precomputed files memory-mapped, or embedded by --model into the cache) and a
    fingerprint of each side's rows (keys of cached indexes)."""
    if args.model is None:
        x = load_embeddings(args.src_embeddings, args.dim, args.fp16, "--src-embeddings")
        y = load_embeddings(args.trg_embeddings, args.dim, args.fp16, "--trg-embeddings")
        keys = [file_key(path, args.unify) for path in (args.src_embeddings, args.trg_embeddings)]
        x, y = unique_rows(x, src, "--src-embeddings", args.unify), unique_rows(y, trg, "--trg-embeddings", args.unify)
        return x, y, keys
    from eval.embed_cache import embed_sides

    sets = {f"src.{args.src_lang}": src.sents, f"trg.{args.trg_lang}": trg.sents}
    x, y = embed_sides(args, sets, rank, size)
    keys = [json.loads((Path(e.filename).parent / "meta.json").read_text())["sha"] for e in (x, y)]
    return x, y, keys


def neighbours(args, x, y, keys: list[str], rank: int, size: int):
    """Both directions' k-NN lists on rank 0 (None on the others), every rank searching its share of blocks:
    exact, or through --index (built once by rank 0 into the cache) when faiss is installed."""
    k, device = args.neighborhood, devices.device_for(args.device)
    approximate = args.index is not None and faiss_or_none() is not None
    if args.index is not None and not approximate and rank == 0:
        print(f"python -m eval.mine: warning: {missing_faiss_message(args.index)}", file=sys.stderr)
    if approximate:
        from eval.mine_index import approximate_part

        part = approximate_part(args, x, y, keys, cache_dir(args), rank, size)
    else:
        part = knn_exact(x, y, k, k, block=args.block, device=device, rank=rank, world=size,
                         cache_bytes=args.cache_mb << 20)  # fmt: skip
    parts = shares.gather({str(rank): part})
    return None if parts is None else merge_ranks([parts[str(r)] for r in range(size)], x.shape[0])


def write_output(args, src, trg, x, y, nb) -> dict:
    """The output file in --mode's format; returns the summary's counts."""
    if args.mode == "mine":
        pairs = mine(nb, args.margin, args.retrieval, args.threshold)
        sents_s, sents_t = [src.sents[i] for i in pairs.src], [trg.sents[j] for j in pairs.trg]
        return {"pairs": write_pairs(args.output, pairs.scores, sents_s, sents_t, as_float64)}
    if args.mode == "score":
        scores = score_aligned(row_cosines(x, y, src.inds, trg.inds), src.inds, trg.inds, nb, args.margin)
        sents_s, sents_t = [src.sents[i] for i in src.inds], [trg.sents[j] for j in trg.inds]
        return {"pairs": write_pairs(args.output, scores, sents_s, sents_t, as_float32)}
    best = search(nb, args.margin)
    errors = int((best != np.arange(best.shape[0])).sum())
    return {"lines": write_lines(args.output, [trg.sents[best[i]] for i in src.inds]), "errors": errors}


def search_kind(args) -> str:
    if args.index is None:
        return "exact"
    return f"faiss {args.index}" if faiss_or_none() is not None else "exact (faiss missing for --index)"


def run(args) -> int:
    rank, size = collectives.init_eval()
    timings, t0 = {}, time.perf_counter()
    src, trg = read_side(args.src, args.unify), read_side(args.trg, args.unify)
    for side in (src, trg):
        log(args, f"{side.path}: {side.lines} lines, {len(side.sents)} rows")
    if args.mode == "score" and src.lines != trg.lines:  # every rank checks, before any embedding or search
        raise MineError(f"--mode score pairs line i of both files: {src.path} has {src.lines} lines, "
                        f"{trg.path} {trg.lines}")  # fmt: skip
    timings["load_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    x, y, keys = embeddings(args, src, trg, rank, size)
    timings["embed_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    nb = neighbours(args, x, y, keys, rank, size)
    timings["knn_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    if rank != 0:
        return 0
    counts = write_output(args, src, trg, x, y, nb)
    timings["write_s"] = time.perf_counter() - t0
    summary = {
        "src": {"file": src.path, "lang": args.src_lang, "lines": src.lines, "rows": len(src.sents)},
        "trg": {"file": trg.path, "lang": args.trg_lang, "lines": trg.lines, "rows": len(trg.sents)},
        "mode": args.mode, "retrieval": args.retrieval, "margin": args.margin, "k": args.neighborhood,
        "threshold": args.threshold, "unify": args.unify, "search": search_kind(args),
        "exact_fallback_rows": nb.exact_rows, "output": str(args.output), **counts, "world_size": size,
        "timings": {key: round(value, 3) for key, value in timings.items()},
    }  # fmt: skip
    write_summary(args.summary or f"{args.output}.json", summary)
    log(args, f"wrote {args.output}: {counts}")
    return 0


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    args = parse_args(argv)
    if args.bench:
        from eval.mine_bench import bench

        return bench(args)
    try:
        return run(args)
    except ValueError as err:  # MineError, ModelError, DataError
        print(f"python -m eval.mine: error: {err}", file=sys.stderr)
        return 2
    finally:
        collectives.finish()


if __name__ == "__main__":
    sys.exit(main())
