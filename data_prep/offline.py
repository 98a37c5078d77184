"""`python -m data_prep.offline --out data`: the offline default corpus from the machine's gettext catalogues.

Writes `OUT/testset/` (a multi-way held-out test set in the FLORES-200 layout, see testset.py) and then
`OUT/prepared/` (a prepared dataset directory of every other English -> X message pair, with a Unigram
tokenizer trained on it). Training never sees a test sentence: `prepare` runs with
`--exclude-flores OUT/testset`, which drops every pair with a side whose `overlap_key` (case,
punctuation and accelerators ignored) equals any test line of any language, and the test asserts it.
Both steps are skipped when their inputs and arguments are unchanged (unless `--force`). A second run into the
same `--out` while one works is refused naming it (`OUT/.testset.lock`, held for the whole run; `prepare` takes
`OUT/.prepared.lock` too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from .gettext_reader import catalogue_files
from .lock import LockError, OutLock
from .output import file_sha256
from .prepare import PrepConfig, prepare
from .signals import Stopped, report_stop, stop_on_signals
from .sources import ReadOptions
from .testset import collect, select, write_flores

log = logging.getLogger("data_prep")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.offline", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--out", default="data", help="writes OUT/prepared and OUT/testset")
    p.add_argument("--locale-root", action="append", help="catalogue root, repeatable (default /usr/share/locale)")
    p.add_argument("--domains", default="", help="comma-separated catalogue names to use (empty: all)")
    p.add_argument("--vocab-size", type=int, default=12000, help="ids of the trained Unigram tokenizer")
    p.add_argument("--tokenizer-sentences", type=int, default=100_000, help="tokenizer training sample (sentences)")
    p.add_argument("--min-langs", type=int, default=20, help="test set languages besides English, at least")
    p.add_argument("--test-size", type=int, default=1000, help="devtest sentences (fewer if the catalogues lack them)")
    p.add_argument("--dev-size", type=int, default=200, help="dev sentences, after devtest is filled")
    p.add_argument("--max-pairs", type=int, help="read at most this many catalogue messages for training")
    p.add_argument("--max-tokens", type=int, default=200, help="max ids per side incl. <s> and </s>")
    p.add_argument("--workers", type=int, default=0, help="tokenisation processes (0: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild both parts even if up to date")
    return p


def build_testset(roots: list[Path], domains: tuple[str, ...], out: Path, args: argparse.Namespace) -> dict:
    """Select and write the test set, or reuse it when catalogues and arguments are unchanged."""
    files = [c.path for root in roots for c in catalogue_files(root, domains)]
    if not files:
        raise FileNotFoundError(f"--locale-root {[str(r) for r in roots]}: no .mo/.po catalogues found")
    blob = [args.min_langs, args.test_size, args.dev_size, list(domains)] + [file_sha256(p) for p in files]
    fingerprint = hashlib.sha256(json.dumps(blob).encode()).hexdigest()
    manifest_path = out / "manifest.json"
    if not args.force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fingerprint and all((out / f).is_file() for f in old["files"]):
            log.info("%s is up to date (%d languages)", out, len(old["languages"]))
            return old
    table = collect(roots, domains)
    test = select(table, args.test_size + args.dev_size, args.min_langs)
    if len(test.langs) < args.min_langs or len(test.msgids) < args.test_size:
        log.warning("test set has %d sentences in %d languages (asked %d in %d+)", len(test.msgids),
                    len(test.langs), args.test_size, args.min_langs)  # fmt: skip
    manifest_path.unlink(missing_ok=True)
    rows = write_flores(test, out, args.test_size, args.dev_size)
    manifest = {
        "fingerprint": fingerprint,
        "catalogues": len(files),
        "candidate_sentences": len(table),
        "languages": test.langs,
        "rows": rows,
        "files": sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.*") if p.suffix in (".dev", ".devtest")),
        "selection": "see data_prep/testset.py: sentence msgids, greedy multi-way language choice",
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _build(roots: list[Path], domains: tuple[str, ...], out: Path, args: argparse.Namespace, start: float) -> dict:
    """The test set, then the training corpus without its sentences; -> the corpus's manifest."""
    test = build_testset(roots, domains, out / "testset", args)
    print(f"test set: {out / 'testset'}: {test['rows']} sentences x {len(test['languages'])} languages + "
          f"eng_Latn ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    cfg = PrepConfig(
        sources=[f"gettext:{r}" for r in roots], out=str(out / "prepared"), train_tokenizer=args.vocab_size,
        tokenizer_max_sentences=args.tokenizer_sentences,
        max_tokens=args.max_tokens, max_pairs=args.max_pairs, exclude_flores=str(out / "testset"),
        read=ReadOptions(gettext_domains=domains), workers=args.workers, force=args.force,
    )  # fmt: skip
    return prepare(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    roots = [Path(r) for r in (args.locale_root or ["/usr/share/locale"])]
    domains = tuple(d for d in args.domains.split(",") if d)
    out, start = Path(args.out), time.perf_counter()
    try:
        with stop_on_signals(), OutLock(out / "testset", "offline"):  # held until the corpus is built from it
            manifest = _build(roots, domains, out, args, start)
    except (FileNotFoundError, ValueError, LockError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        return report_stop(out, e)
    c = manifest["counts"]
    print(f"prepared: {out / 'prepared'}: read {c['read']} messages, kept {c['kept']} pairs in "
          f"{len(manifest['language_pairs'])} language pairs, skipped {c['skipped']}; rows {manifest['rows']}; "
          f"vocab {manifest['tokenizer']['vocab_size']} ({time.perf_counter() - start:.0f} s total)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
