"""Bad inputs and interrupted builds: every line accounted for, clear refusals, the old
output kept until a new one is complete, the tokenizer's contents in the fingerprint, skipped.jsonl."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from data_prep import csv_reader, readers, workdir
from data_prep.__main__ import main
from data_prep.records import EXTRA_FIELDS, MALFORMED, Pair, Skip
from data_prep.sources import ReadOptions, Source
from tests.data_prep.helpers import sentence_pairs, write_tsv

LANGS = ("fra_Latn", "eng_Latn")
ROOT = Path(__file__).resolve().parents[2]


def _split(records):
    records = list(records)
    return [r for r in records if isinstance(r, Pair)], [r for r in records if isinstance(r, Skip)]


def _prep(*argv: str) -> int:
    return main([*argv, "--workers", "1", "-q"])


def _write_csv(path: Path, pairs, bad_line: int | None = None, bad: str = '"opens, never closes') -> Path:
    lines = ["src,trg"] + [f"{s},{t}" for s, t in pairs]
    if bad_line is not None:
        lines[bad_line] = f"{bad},{pairs[bad_line - 1][1]}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- one unterminated quote costs one record, not the rest of the file -----------------------------------------


def test_unclosed_quote_at_end_of_file_is_reported_where_it_opened(tmp_path):
    pairs = sentence_pairs(1000)
    path = _write_csv(tmp_path / "a.csv", pairs, bad_line=6)  # data line 6 = physical line 7
    good, skips = _split(readers.csv_records(path, LANGS))
    assert len(good) == 999 and [p.src for p in good[:5]] == [s for s, _ in pairs[:5]]
    assert good[5].src == pairs[6][0] and good[-1].trg == pairs[-1][1]
    assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{path}:7")]
    assert f"still open after {csv_reader.MAX_RECORD_LINES} lines" in skips[0].detail
    short = _write_csv(tmp_path / "b.csv", pairs[:50], bad_line=6)  # the end of the file comes first
    good, skips = _split(readers.csv_records(short, LANGS))
    assert len(good) == 49 and [(s.where, "never closed" in s.detail) for s in skips] == [(f"{short}:7", True)]


def test_unclosed_quote_end_to_end_counts_every_line(tmp_path, capsys):
    path = _write_csv(tmp_path / "a.csv", sentence_pairs(300), bad_line=6)
    out = tmp_path / "o"
    assert _prep("--source", f"csv:{path}", "--out", str(out), "--train-tokenizer", "100") == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["read"], counts["kept"], counts["skipped"][MALFORMED]) == (300, 299, 1)
    assert json.loads((out / "skipped.jsonl").read_text().splitlines()[0])["where"] == f"{path}:7"


def test_quoted_newlines_stay_legal_and_a_runaway_quote_stops_at_the_line_limit(tmp_path):
    n = csv_reader.MAX_RECORD_LINES + 20
    body = ['"deux\nlignes",two lines', '"a ""quoted"" word",x', 'say "hi",y', '"closed"tail,z']
    body += ['"runaway,r'] + [f"ligne {i},line {i}" for i in range(n)]
    path = tmp_path / "a.csv"
    path.write_text("src,trg\n" + "\n".join(body) + "\n", encoding="utf-8")
    good, skips = _split(readers.csv_records(path, LANGS))
    assert [p.src for p in good[:4]] == ["deux\nlignes", 'a "quoted" word', 'say "hi"', "closedtail"]
    assert [p.where for p in good[:5]] == [f"{path}:{i}" for i in (2, 4, 5, 6, 8)]  # the first resumes at line 8
    assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{path}:7")]
    assert f"after {csv_reader.MAX_RECORD_LINES} lines" in skips[0].detail and len(good) == 4 + n


@pytest.mark.parametrize(
    ("line", "open_after"),
    [("a,b", False), ('"a,b', True), ('"a"",b', True), ('"a""",b', False), ('x,"y', True), ('x"y,z', False)],
)
def test_quote_state_machine_agrees_with_csv(line, open_after):
    import csv

    assert csv_reader.ends_in_quote(line, False)[0] is open_after
    if not open_after:
        assert len(list(csv.reader([line]))) == 1


# -- shifted columns, unknown languages, same-language pairs ---------------------------------------------------


def test_tsv_extra_fields_unknown_and_same_languages_are_skipped_by_reason(tmp_path):
    path = tmp_path / "a.tsv"
    lines = [
        "src\ttrg\tsrc_lang\ttrg_lang",
        "le chat\tthe cat\tfr\teng_Latn",  # a locale code: mapped to fra_Latn, kept
        "la\ttab 107\tin a sentence\tfra_Latn\teng_Latn",  # one tab too many: columns shifted
        "un chien\ta dog\tfrançais\teng_Latn",  # not a language code
        "the dog\ta dog\teng_Latn\ten",  # English to English: not a translation
        "quelque\tsomething\t\t",  # empty language columns: the --src-lang/--trg-lang defaults
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, skips = _split(readers.tsv_records(path, LANGS))
    assert [(s.reason, s.where) for s in skips] == [(EXTRA_FIELDS, f"{path}:3")]
    out = tmp_path / "o"
    assert _prep("--source", f"tsv:{path}", "--out", str(out), "--train-tokenizer", "60", "--min-valid", "0") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {k: v for k, v in manifest["counts"]["skipped"].items() if v}
    assert skipped == {"extra_fields": 1, "unknown_language": 1, "same_language": 1}
    assert manifest["language_pairs"] == {"fra_Latn-eng_Latn": 1, "und_Zzzz-und_Zzzz": 1}
    entries = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert {e["reason"]: e["where"] for e in entries}["unknown_language"] == f"{path}:4"
    assert "français" in {e["reason"]: e.get("detail") for e in entries}["unknown_language"]


def test_bad_language_flag_is_refused(tmp_path, capsys):
    path = write_tsv(tmp_path / "a.tsv", sentence_pairs(10), langs=None)
    assert _prep("--source", f"tsv:{path}", "--out", str(tmp_path / "o"), "--train-tokenizer", "60",
                 "--src-lang", "French") == 2  # fmt: skip
    assert "--src-lang 'French'" in capsys.readouterr().err and not (tmp_path / "o").exists()


# -- directories given as files, compressed inputs -------------------------------------------------------------


def test_directory_as_file_source_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    assert _prep("--source", f"tsv:{tmp_path / 'corpus'}", "--out", str(tmp_path / "o"), "--train-tokenizer", "60") == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "--source tsv:" in err and not (tmp_path / "o").exists()


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gz":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    import zstandard

    return zstandard.ZstdCompressor().compress(data[:100]) + zstandard.ZstdCompressor().compress(data[100:])


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
def test_compressed_inputs_read_like_plain_ones(tmp_path, kind):
    plain = write_tsv(tmp_path / "a.tsv", sentence_pairs(50))
    packed = tmp_path / f"a.tsv.{kind}"
    packed.write_bytes(_compress(kind, plain.read_bytes()))  # zst: two frames, as pzstd writes
    read = lambda p: [(r.src, r.trg, r.src_lang, r.where.rsplit(":", 1)[1]) for r in readers.tsv_records(p, LANGS)]
    assert read(packed) == read(plain) and len(read(plain)) == 50
    moses = tmp_path / f"m.fr.{kind}", tmp_path / f"m.en.{kind}"
    for path, text in zip(moses, ("un\ndeux\n", "one\ntwo\n")):
        path.write_bytes(_compress(kind, text.encode()))
    pairs = list(Source.parse(f"moses:{moses[0]},{moses[1]}").records(ReadOptions()))
    assert [(p.src, p.trg, p.src_lang, p.trg_lang) for p in pairs][1] == ("deux", "two", "fra_Latn", "eng_Latn")


def test_truncated_compressed_file_names_the_file_and_line(tmp_path):
    data = gzip.compress(write_tsv(tmp_path / "a.tsv", sentence_pairs(2000)).read_bytes())
    bad = tmp_path / "cut.tsv.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(readers.SourceError, match=r"cut.tsv.gz: cannot read past line \d+"):
        list(readers.tsv_records(bad, LANGS))


# -- the previous output survives a failed or killed rebuild --------------------------------------------------


@pytest.fixture
def first_build(tmp_path):
    corpus = write_tsv(tmp_path / "a.tsv", sentence_pairs(3000))
    out = tmp_path / "out"
    assert _prep("--source", f"tsv:{corpus}", "--out", str(out), "--train-tokenizer", "100") == 0
    (out / "NOTES.txt").write_text("mine")  # not written by a build: must survive rebuilds
    (out / "sampling" / "stale.txt").write_text("x")  # sampling/ is rebuilt with the rows: nothing old survives
    return corpus, out, _snapshot(out)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_failed_rebuild_leaves_the_previous_output(first_build, tmp_path, capsys):
    corpus, out, before = first_build
    bad = tmp_path / "bad.tsv"
    bad.write_text("source\ttarget\nx\ty\n")  # fails while reading, after the first source was spooled
    argv = ["--source", f"tsv:{corpus}", "--source", f"tsv:{bad}", "--out", str(out), "--train-tokenizer", "100"]
    assert _prep(*argv) == 2
    assert "bad.tsv:1: header" in capsys.readouterr().err
    assert _snapshot(out) == before and not workdir.work_dir(out).exists()


def test_killed_rebuild_leaves_the_previous_output(first_build):
    corpus, out, before = first_build
    cmd = [sys.executable, "-m", "data_prep", "--source", f"tsv:{corpus}", "--out", str(out), "--train-tokenizer",
           "100", "--force", "--workers", "1", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    started = workdir.work_dir(out) / "engine" / "read" / "completions"
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the rebuild ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the build and the engine's processes
    proc.wait()
    assert _snapshot(out) == before  # the old output, whole; only the work dir is left over
    assert _prep("--source", f"tsv:{corpus}", "--out", str(out), "--train-tokenizer", "100", "--force") == 0
    assert not workdir.work_dir(out).exists() and (out / "NOTES.txt").read_text() == "mine"
    assert (out / "sampling" / "train.json").is_file() and not (out / "sampling" / "stale.txt").exists()


def test_crash_between_the_two_renames_is_repaired(tmp_path):
    out = tmp_path / "out"
    old = workdir.old_dir(out)
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    workdir.settle(out)  # OUT missing, .OUT.old complete: put back
    assert (out / "manifest.json").exists() and not old.exists()
    old.mkdir()
    (old / "NOTES.txt").write_text("mine")
    (old / "manifest.json").write_text("old")
    workdir.settle(out)  # both there: the new OUT stays, foreign entries carried over
    assert (out / "manifest.json").read_text() == "{}" and (out / "NOTES.txt").exists() and not old.exists()


# -- the tokenizer's files are in the fingerprint -------------------------------------------------------------


def test_changed_tokenizer_files_rebuild(first_build, tmp_path):
    corpus, out, _ = first_build
    tok = tmp_path / "tok"
    shutil.copytree(out / "tokenizer", tok)
    argv = ["--source", f"tsv:{corpus}", "--out", str(tmp_path / "o2"), "--tokenizer", str(tok)]
    assert _prep(*argv) == 0
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert [e["source"] for e in manifest["inputs"]][-1] == "tokenizer"
    assert _prep("--source", f"tsv:{corpus}", "--out", str(tmp_path / "small"), "--train-tokenizer", "45") == 0
    shutil.rmtree(tok)
    shutil.copytree(tmp_path / "small" / "tokenizer", tok)  # same path, other contents
    assert _prep(*argv) == 0
    again = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert again["fingerprint"] != manifest["fingerprint"]
    assert again["tokenizer"]["vocab_size"] != manifest["tokenizer"]["vocab_size"]


# -- every skipped line in skipped.jsonl ---------------------------------------------------------------------


def test_skipped_jsonl_lists_every_skip(tmp_path):
    pairs = sentence_pairs(40)
    path = write_tsv(tmp_path / "a.tsv", pairs + pairs[:12], langs=None)  # 12 duplicates
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"broken line {i}\n" for i in range(30)))  # 30 malformed, more than the summary keeps
    out = tmp_path / "o"
    assert _prep("--source", f"tsv:{path}", "--out", str(out), "--train-tokenizer", "60") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entries = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert Counter(e["reason"] for e in entries) == {MALFORMED: 30, "duplicate": 12}
    assert {k: v for k, v in manifest["counts"]["skipped"].items() if v} == {MALFORMED: 30, "duplicate": 12}
    assert sorted(e["where"] for e in entries if e["reason"] == MALFORMED) == sorted(
        f"{path}:{n}" for n in range(54, 84)
    )
    dup = next(e for e in entries if e["where"] == f"{path}:42")  # duplicates: by key partition, then input order
    assert dup == {"where": f"{path}:42", "reason": "duplicate", "detail": f"same pair as {path}:2"}
    assert all(len(v) <= 5 for v in manifest["skip_examples"].values()) and manifest["skipped_file"] == "skipped.jsonl"
