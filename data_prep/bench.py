"""`python -m data_prep.bench`: whole-preparation throughput against the tokenizer's own batched limit.

Both numbers come from the same run, the same corpus, the same tokenizer and the same cores:
- prep: `python -m data_prep --source tsv:CORPUS --tokenizer TOK --workers W --force` in a child process,
  pairs read per second of wall time (reading, cleaning, dedup, tokenising, Arrow writing, manifest);
  its peak RSS (the largest process: parent or a worker) is reported beside it;
- limit: `Tokenizer.encode_batch_fast` over the same src and trg texts with the library's own thread pool
  on W threads (RAYON_NUM_THREADS=W), the raw batched tokenisation rate that bounds the stage.
The corpus is English -> X pairs from the machine's gettext catalogues (real UI text in ~150 languages),
repeated with a running number until it has `--pairs` rows so no pair is a duplicate; the tokenizer is
`--tokenizer` or a Unigram one trained here (training time is not part of either number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .readers import tsv_records


def make_corpus(path: Path, n_pairs: int, locale_root: Path) -> None:
    """Write a tsv of `n_pairs` distinct pairs built from catalogue messages."""
    from .clean import Cleaner
    from .gettext_reader import gettext_records
    from .records import Pair

    cleaner, base = Cleaner(), []
    for rec in gettext_records(locale_root):
        clean = cleaner.check(rec) if isinstance(rec, Pair) else None
        if isinstance(clean, Pair) and "\t" not in clean.src + clean.trg and "\n" not in clean.src + clean.trg:
            base.append((clean.src, clean.trg, clean.trg_lang))
        if len(base) >= 200_000:
            break
    if not base:
        raise FileNotFoundError(f"--locale-root {locale_root}: no catalogue text to build a corpus from")
    with open(path, "w", encoding="utf-8") as f:
        f.write("src\ttrg\tsrc_lang\ttrg_lang\n")
        for i in range(n_pairs):
            src, trg, lang = base[i % len(base)]
            tag = f" ({i // len(base)})" if i >= len(base) else ""
            f.write(f"{src}{tag}\t{trg}{tag}\teng_Latn\t{lang}\n")


def train_small_tokenizer(corpus: Path, out: Path, vocab_size: int) -> None:
    from .tokenizer import train_unigram

    texts = (t for rec in tsv_records(corpus, ("", "")) for t in (rec.src, rec.trg))
    sample = (t for i, t in enumerate(texts) if i < 100_000)
    train_unigram(sample, vocab_size, out)


def raw_limit(corpus: Path, tok_dir: Path, threads: int) -> float:
    """Pairs/s of batched encoding alone, measured in a child with the thread pool sized to `threads`."""
    code = f"""
import time
from pathlib import Path
from data_prep.readers import tsv_records
from data_prep.tokenizer import backend_json
from tokenizers import Tokenizer
tok = Tokenizer.from_str(backend_json(Path({str(tok_dir)!r})))
src, trg = [], []
for rec in tsv_records(Path({str(corpus)!r}), ("", "")):
    src.append(rec.src); trg.append(rec.trg)
tok.encode_batch_fast(src[:1000], add_special_tokens=False)  # warm the thread pool
start = time.perf_counter()
for i in range(0, len(src), 20000):
    tok.encode_batch_fast(src[i:i + 20000], add_special_tokens=False)
    tok.encode_batch_fast(trg[i:i + 20000], add_special_tokens=False)
print(len(src) / (time.perf_counter() - start))
"""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in KiB; file-backed pages (the memory-mapped Arrow files) are in VmRSS only."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0, 0
    return int(fields.get("VmRSS", "0 kB").split()[0]), int(fields.get("RssAnon", "0 kB").split()[0])


def run_prep(corpus: Path, tok_dir: Path, out: Path, workers: int) -> tuple[float, dict, dict]:
    """(wall s, memory peaks in MiB, manifest) of one full preparation in a child, sampled every 0.2 s."""
    cmd = [sys.executable, "-m", "data_prep", "--source", f"tsv:{corpus}", "--out", str(out), "--tokenizer",
           str(tok_dir), "--workers", str(workers), "--force", "-q"]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    peaks = {"largest process RSS": 0, "all processes RSS": 0, "all processes anonymous": 0}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    while child.poll() is None:
        sizes = [_rss_kib(p) for p in _tree(child.pid)]
        sample = (max(r for r, _ in sizes), sum(r for r, _ in sizes), sum(a for _, a in sizes))
        peaks = {k: max(v, new) for (k, v), new in zip(peaks.items(), sample)}
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    peaks["largest process RSS"] = max(
        peaks["largest process RSS"], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return wall, {k: v / 1024 for k, v in peaks.items()}, json.loads((out / "manifest.json").read_text())


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--pairs", type=int, default=300_000, help="corpus size")
    p.add_argument("--workers", type=int, default=2, help="processes for prep, threads for the limit")
    p.add_argument("--tokenizer", help="tokenizer dir (default: train a 12k Unigram one on the corpus)")
    p.add_argument("--locale-root", default="/usr/share/locale", help="catalogues the corpus is built from")
    p.add_argument("--keep", help="keep the corpus and output in this dir instead of a temporary one")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "bench.tsv"
        if not corpus.exists() or sum(1 for _ in open(corpus, "rb")) != args.pairs + 1:
            make_corpus(corpus, args.pairs, Path(args.locale_root))
        tok_dir = Path(args.tokenizer) if args.tokenizer else work / "tokenizer"
        if not args.tokenizer and not (tok_dir / "tokenizer.json").exists():
            train_small_tokenizer(corpus, tok_dir, 12000)
        wall, peaks, manifest = run_prep(corpus, tok_dir, work / "prepared", args.workers)
        limit = raw_limit(corpus, tok_dir, args.workers)
    rate = manifest["counts"]["read"] / wall
    tok = manifest["tokenizer"]
    print(f"data_prep bench | {platform.machine()} x{os.cpu_count()} cores | git {git_sha()} | "
          f"tokenizer {tok['name']} ({tok['vocab_size']} ids)")  # fmt: skip
    print(f"pairs {manifest['counts']['read']}, workers {args.workers}")
    print(f"prep   : {wall:8.1f} s  {rate:10.0f} pairs/s")
    print(f"limit  : {manifest['counts']['read'] / limit:8.1f} s  {limit:10.0f} pairs/s  (encode_batch_fast, "
          f"{args.workers} threads)")  # fmt: skip
    print(f"ratio  : {rate / limit:.0%} of the tokenizer limit")
    print("memory : " + ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items()) + " (peaks)")
    print("stages : " + ", ".join(f"{k} {v:.1f} s" for k, v in manifest["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
