"""`prepare(cfg)`: read -> clean -> spool -> dedup/split -> tokenizer -> parallel encode -> Arrow + manifest.

Passes over the data (memory stays flat: nothing holds the corpus):
1. stream every source through the cleaner into the on-disk spool (spool.py), counting every skip;
2. dedup + held-out split from the spool's key column (8 B a pair);
3. train the tokenizer on the spool's kept text (or copy a pretrained one);
4. tokenise the spool in parallel (encode.py) and save `train/`, `valid/` with `datasets`;
5. write `manifest.json` last: its presence marks a complete directory.
Every skipped record goes to `skipped.jsonl` (skiplog.py). All of it is built in a work directory beside
`--out` that replaces the old output only once complete (workdir.py).

Re-running with the same inputs (sha256, the `--tokenizer` files included) and arguments finds the same
fingerprint in the manifest and does nothing unless `force`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import encode, lengths, output, spool, workdir
from .clean import DUPLICATE, SAME_LANGUAGE, UNKNOWN_LANGUAGE, Cleaner
from .langcodes import to_flores
from .records import Skip
from .skiplog import SKIPPED_FILE, SkipLog
from .sources import ReadOptions, Source
from .tokenizer import TokenizerInfo, backend_json, dir_sha256, save_pretrained_copy, train_unigram

log = logging.getLogger("data_prep")
FORMAT_VERSION = 2  # bump when the output of the same inputs changes (2: language checks, skipped.jsonl)


@dataclass
class PrepConfig:
    """Arguments of `python -m data_prep` (one field per flag; see `--help`)."""

    sources: list[str]
    """`FORMAT:PATH` specs (--source)."""
    out: str
    """Output directory (--out)."""
    tokenizer: str | None = None
    """Pretrained tokenizer path or hub name (--tokenizer)."""
    train_tokenizer: int | None = None
    """Vocabulary size of a Unigram tokenizer trained on the kept text (--train-tokenizer)."""
    tokenizer_max_sentences: int = 1_000_000
    """Sentences used to train the tokenizer, a hash-uniform sample of the kept pairs (--tokenizer-max-sentences).
    Training costs about 0.4 ms a sentence on one 2-core machine (data_prep/bench.py)."""
    max_tokens: int = 200
    """Maximum ids per side including <s> and </s> (--max-tokens); longer sides are truncated and counted."""
    max_chars: int = 1000
    """Pairs with a side longer than this many characters are skipped (--max-chars)."""
    max_ratio: float = 6.0
    """Pairs whose longer side has more than this many times the characters of the other are skipped."""
    valid_fraction: float = 0.01
    """Share of unique pairs held out for `valid/`, chosen by pair hash (--valid-fraction)."""
    min_valid: int = 8
    """At least this many valid pairs (the smallest hashes) when the fraction gives fewer (--min-valid)."""
    max_pairs: int | None = None
    """Stop reading after this many records (--max-pairs); the manifest says so."""
    exclude_flores: str | None = None
    """A FLORES-layout dir whose sentences (any language, any split) must not occur in training (--exclude-flores)."""
    read: ReadOptions = field(default_factory=ReadOptions)
    workers: int = 0
    """Tokenisation processes (--workers; 0: all cores)."""
    chunk_rows: int = 20_000
    """Spool rows per tokenisation task (--chunk-rows)."""
    force: bool = False
    """Rebuild even when the manifest fingerprint matches (--force)."""

    def check(self) -> None:
        if (self.tokenizer is None) == (self.train_tokenizer is None):
            raise ValueError("give exactly one of --tokenizer NAME_OR_PATH and --train-tokenizer VOCAB_SIZE")
        if not self.sources:
            raise ValueError("give at least one --source FORMAT:PATH")
        if self.max_tokens < 3:
            raise ValueError(f"--max-tokens {self.max_tokens}: need room for <s>, one token and </s>")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction {self.valid_fraction}: must be in [0, 1)")
        if self.max_ratio < 1.0 or self.max_chars < 1:
            raise ValueError(f"--max-ratio {self.max_ratio} must be >= 1 and --max-chars {self.max_chars} >= 1")
        for flag, code in (("--src-lang", self.read.src_lang), ("--trg-lang", self.read.trg_lang)):
            if to_flores(code) is None:
                raise ValueError(f"{flag} {code!r}: not a FLORES-200 code (fra_Latn) nor a known locale (fr, pt_BR)")

    def args_json(self) -> dict:
        """The arguments that decide the output (not `workers`, `force`: the output does not depend on them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("workers", "force", "out", "chunk_rows")}


def prepare(cfg: PrepConfig) -> dict:
    """Build (or confirm up to date) the prepared directory `cfg.out`; returns the manifest.

    A failure at any point (bad input, SIGKILL) leaves a previous output of `cfg.out` as it was."""
    cfg.check()
    out = Path(cfg.out)
    sources = [Source.parse(s) for s in cfg.sources]
    inputs = _input_entries(sources, cfg)
    fingerprint = _fingerprint(cfg, inputs)
    workdir.settle(out)
    old = _up_to_date(out, fingerprint)
    if old is not None and not cfg.force:
        log.info("%s is up to date (fingerprint %s); nothing to do (--force rebuilds)", out, fingerprint[:12])
        return old
    workdir.check_replaceable(out)
    build = workdir.start(out)
    try:
        manifest = _build(cfg, sources, inputs, fingerprint, build)
    except BaseException:
        workdir.abandon(build)
        raise
    workdir.commit(build, out)
    log.info("wrote %s: %d train + %d valid pairs", out, manifest["rows"]["train"], manifest["rows"]["valid"])
    return manifest


def _build(cfg: PrepConfig, sources: list[Source], inputs: list[dict], fingerprint: str, build: Path) -> dict:
    """Every output into `build` (temporary files in `build/.work`), `manifest.json` last."""
    work = build / ".work"
    work.mkdir()
    timer, skips = _StageTimer(), SkipLog(build / SKIPPED_FILE)
    counts, stopped = _spool_sources(sources, cfg, work / "spool.arrow", skips)
    timer.done("read + clean + spool")
    table = spool.open_spool(work / "spool.arrow")
    keys = table.column("key").to_numpy()
    splits = spool.assign_splits(keys, cfg.valid_fraction, cfg.min_valid)
    _log_duplicates(table, keys, splits, skips)
    counts["skipped"][DUPLICATE] = int((splits == spool.DROP).sum())
    counts["kept"] = counts["spooled"] - counts["skipped"][DUPLICATE]
    np.save(work / "splits.npy", splits)
    timer.done("dedup + split")
    tok = _tokenizer(cfg, table, splits, build / "tokenizer")
    timer.done("tokenizer")
    stats = _encode(cfg, table.num_rows, work, build, tok, timer)
    lengths.write_sampling_files(build, "train")  # the trainer's shared lengths / pair files (data_prep/lengths.py)
    timer.done("sampling files")
    manifest = _manifest(cfg, fingerprint, inputs, tok, counts, skips, stats, build, stopped)
    manifest["seconds"] = timer.seconds  # wall time per stage (not part of the fingerprint)
    del table
    shutil.rmtree(work)
    (build / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _log_duplicates(table, keys: np.ndarray, splits: np.ndarray, skips: SkipLog) -> None:
    """One skipped.jsonl line per duplicate, naming the earlier pair it repeats; then the log is complete."""
    where = table.column("where")
    for rows, firsts in spool.duplicates(keys, splits):
        for dup, first in zip(where.take(rows).to_pylist(), where.take(firsts).to_pylist()):
            skips.add(DUPLICATE, dup, f"same pair as {first}")
    skips.close()


def _input_entries(sources: list[Source], cfg: PrepConfig) -> list[dict]:
    entries = []
    for src in sources:
        for path in src.files(cfg.read):
            entries.append(
                {
                    "source": f"{src.fmt}:{src.path}",
                    "path": str(path),
                    "size": path.stat().st_size,
                    "sha256": output.file_sha256(path),
                }
            )
    if cfg.exclude_flores:
        for path in sorted(p for p in Path(cfg.exclude_flores).rglob("*") if p.is_file()):
            entries.append(
                {
                    "source": "exclude",
                    "path": str(path),
                    "size": path.stat().st_size,
                    "sha256": output.file_sha256(path),
                }
            )
    if cfg.tokenizer is not None:
        entries.append(_tokenizer_entry(cfg.tokenizer))
    return entries


def _tokenizer_entry(name_or_path: str) -> dict:
    """The `--tokenizer` as an input: the sha256 of its files (a local path) or of the tokenizer that
    transformers resolves for a hub name, so a changed tokenizer changes the fingerprint."""
    path = Path(name_or_path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return {"source": "tokenizer", "path": name_or_path, "size": size, "sha256": dir_sha256(path)}
    if path.is_file():
        return {"source": "tokenizer", "path": name_or_path, "size": path.stat().st_size,
                "sha256": output.file_sha256(path)}  # fmt: skip
    try:
        backend = backend_json(name_or_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--tokenizer {name_or_path}: cannot load ({e})") from None
    digest = hashlib.sha256(backend.encode()).hexdigest()
    return {"source": "tokenizer", "path": name_or_path, "size": None, "sha256": digest}


def _fingerprint(cfg: PrepConfig, inputs: list[dict]) -> str:
    blob = {"version": FORMAT_VERSION, "args": cfg.args_json(), "inputs": [(e["source"], e["sha256"]) for e in inputs]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(out: Path, fingerprint: str) -> dict | None:
    """The existing manifest if it has this fingerprint and every shard it lists is present."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    if not all((out / s["file"]).is_file() for s in manifest.get("shards", [])):
        return None
    return manifest


class _StageTimer:
    """Wall seconds per stage, logged as each ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now
        log.info("%s: %.1f s", stage, self.seconds[stage])


def _held_out_keys(folder: str | None) -> frozenset[str]:
    """`overlap_key` of every line of every file under a FLORES-layout folder (all languages, splits)."""
    from .clean import overlap_key

    if not folder:
        return frozenset()
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--exclude-flores {folder}: not a directory")
    keys = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".dev", ".devtest")):
        keys.update(k for k in map(overlap_key, path.read_text(encoding="utf-8").splitlines()) if k)
    return frozenset(keys)


def _spool_sources(sources: list[Source], cfg: PrepConfig, path: Path, skips: SkipLog) -> tuple[dict, bool]:
    """Pass 1: every record read, counted and either skipped by reason or appended to the spool."""
    from tqdm import tqdm

    cleaner = Cleaner(cfg.max_chars, cfg.max_ratio, _held_out_keys(cfg.exclude_flores))
    counts: dict = {"read": 0, "skipped": Counter(), "by_source": {}}
    writer = spool.SpoolWriter(path)
    stopped = False
    for src in sources:
        name, before = f"{src.fmt}:{src.path}", Counter(counts["skipped"])
        read_before, spooled_before = counts["read"], writer.rows
        with tqdm(desc=f"read {name}", unit=" rec", disable=None, mininterval=1.0) as bar:
            for rec in src.records(cfg.read):
                if cfg.max_pairs is not None and counts["read"] >= cfg.max_pairs:
                    stopped = True
                    break
                counts["read"] += 1
                bar.update()
                reason = _take(rec, cleaner, writer, skips)
                if reason:
                    counts["skipped"][reason] += 1
        counts["by_source"][name] = {
            "read": counts["read"] - read_before,
            "spooled": writer.rows - spooled_before,
            "skipped": dict(counts["skipped"] - before),
        }
        if stopped:
            log.warning("--max-pairs %d reached in %s; later records and sources were not read", cfg.max_pairs, name)
            break
    writer.close()
    counts["spooled"] = writer.rows
    return counts, stopped


def _take(rec, cleaner: Cleaner, writer: spool.SpoolWriter, skips: SkipLog) -> str | None:
    """Spool a record or return its skip reason (every skip goes to skipped.jsonl with its file:line)."""
    if isinstance(rec, Skip):
        skips.add(rec.reason, rec.where, rec.detail)
        return rec.reason
    result = cleaner.check(rec)
    if isinstance(result, str):
        langs = result in (UNKNOWN_LANGUAGE, SAME_LANGUAGE)
        skips.add(result, rec.where, f"src_lang {rec.src_lang!r}, trg_lang {rec.trg_lang!r}" if langs else "")
        return result
    writer.add(result)
    return None


def _tokenizer(cfg: PrepConfig, table, splits: np.ndarray, tok_dir: Path) -> TokenizerInfo:
    if cfg.tokenizer is not None:
        return save_pretrained_copy(cfg.tokenizer, tok_dir)
    n_kept = int((splits != spool.DROP).sum())
    if n_kept == 0:
        raise ValueError("no pair survived cleaning; nothing to train a tokenizer on (see the skip counts above)")
    mask = spool.sample_mask(table.column("key").to_numpy(), splits, cfg.tokenizer_max_sentences)
    log.info("training a %d-id unigram tokenizer on %d sentences", cfg.train_tokenizer, 2 * int(mask.sum()))
    texts = spool.iter_texts(table, mask)
    info = train_unigram(texts, cfg.train_tokenizer, tok_dir, show_progress=log.isEnabledFor(logging.INFO))
    if info.vocab_size < cfg.train_tokenizer:
        log.warning("--train-tokenizer %d: the text supports only %d ids", cfg.train_tokenizer, info.vocab_size)
    return info


def _encode(cfg: PrepConfig, n_rows: int, work: Path, out: Path, tok: TokenizerInfo, timer) -> list[encode.ChunkStats]:
    from tqdm import tqdm

    chunks = work / "chunks"
    chunks.mkdir()
    job = encode.EncodeJob(
        tok.backend,
        work / "spool.arrow",
        work / "splits.npy",
        chunks,
        cfg.max_tokens,
        tok.special_ids["bos"],
        tok.special_ids["eos"],
    )
    workers = cfg.workers or os.cpu_count() or 1
    n_chunks = -(-n_rows // cfg.chunk_rows)
    with tqdm(total=n_chunks, desc=f"tokenise ({workers} proc)", unit=" chunk", disable=None) as bar:
        stats = encode.encode_spool(job, n_rows, cfg.chunk_rows, workers, on_chunk=lambda _: bar.update())
    timer.done("tokenise")
    for name in encode.SPLIT_NAMES.values():
        files = [encode.chunk_path(chunks, name, s.index) for s in stats if s.rows.get(name)]
        output.save_split(files, out / name)
    timer.done("save_to_disk")
    return stats


def _manifest(cfg, fingerprint, inputs, tok, counts, skips: SkipLog, stats, out, stopped) -> dict:
    hist = {
        side: sum((s.length_hist[side] for s in stats if side in s.length_hist), np.zeros(cfg.max_tokens + 1))
        for side in ("src", "trg")
    }
    shards = output.shard_entries(out, "train") + output.shard_entries(out, "valid")
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "args": cfg.args_json(),
        "inputs": inputs,
        "tokenizer": tok.to_json(),
        "max_tokens": cfg.max_tokens,
        "counts": {
            "read": counts["read"],
            "kept": counts["kept"],
            "skipped": dict(sorted(counts["skipped"].items())),
            "by_source": counts["by_source"],
        },
        "stopped_at_max_pairs": stopped,
        "rows": {name: sum(s.rows.get(name, 0) for s in stats) for name in encode.SPLIT_NAMES.values()},
        "truncated": {side: sum(s.truncated.get(side, 0) for s in stats) for side in ("src", "trg")},
        "token_lengths": {side: output.length_stats(h.astype(np.int64)) for side, h in hist.items()},
        "language_pairs": _language_pairs(out),
        "skip_examples": skips.summary(),  # the first few per reason; every one is in skipped.jsonl
        "skipped_file": SKIPPED_FILE,
        "shards": shards,
        "versions": _versions(),
    }


def _language_pairs(out: Path) -> dict[str, int]:
    import datasets

    pairs: Counter = Counter()
    for name in encode.SPLIT_NAMES.values():
        table = datasets.load_from_disk(str(out / name)).data.table.select(["src_lang", "trg_lang"])
        grouped = table.group_by(["src_lang", "trg_lang"]).aggregate([([], "count_all")]).to_pylist()
        pairs.update({f"{g['src_lang']}-{g['trg_lang']}": g["count_all"] for g in grouped})
    return dict(sorted(pairs.items()))


def _versions() -> dict[str, str]:
    import datasets
    import pyarrow
    import tokenizers
    import transformers

    return {m.__name__: m.__version__ for m in (datasets, pyarrow, tokenizers, transformers)}
