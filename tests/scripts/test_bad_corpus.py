"""A corpus made mostly of bad lines of every kind, in every line-based format plus a gettext catalogue, through
`python -m data_prep`: nothing crashes and every record is accounted for in the manifest (read = kept + skipped,
per reason and per source). tests/data_prep/test_prepare.py checks the reasons of one tsv; this mixes the formats."""

from __future__ import annotations

import json

import polib
import pytest

from data_prep.__main__ import main
from tests.data_prep.helpers import sentence_pairs

LONG = "long " * 300  # 1500 characters > the 1000-character limit
# (src, trg, reason it must be dropped for); each format writes them in its own syntax.
BAD_PAIRS = [
    ("   ", "an empty source", "empty"),
    ("a\x07bell", "control", "control_chars"),
    ("same text", "same text", "identical"),
    ("x", "a very much longer target side " * 3, "length_ratio"),
    (LONG, "short", "too_long"),
]


def write_line_formats(root, good: list[tuple[str, str]]):
    """tsv, csv, jsonl and moses files: the good pairs, each bad pair, malformed lines, invalid UTF-8, duplicates.
    -> (sources, records written, expected skip counts)."""
    bad = [(s, t) for s, t, _ in BAD_PAIRS]
    expected: dict[str, int] = {}
    for _, _, reason in BAD_PAIRS:
        expected[reason] = 4  # once per format
    (root / "a.tsv").write_bytes(
        ("src\ttrg\n" + "".join(f"{s}\t{t}\n" for s, t in good[:40] + bad + good[:5]) + "one field only\n").encode()
        + b"caf\xe9\tcoffee\n"
    )
    (root / "b.csv").write_bytes(
        ("src,trg\n" + "".join(f'"{s}","{t}"\n' for s, t in good[40:80] + bad) + '"unclosed,quote\n').encode()
    )
    jsonl = [json.dumps({"src": s, "trg": t}) for s, t in good[80:120] + bad]
    jsonl += ["{not json", json.dumps({"src": "no target"}), json.dumps({"src": 1, "trg": "y"})]
    (root / "c.jsonl").write_bytes(("\n".join(jsonl) + "\n").encode() + b'{"src": "\xff", "trg": "b"}\n')
    src_lines = [s for s, _ in good[120:160] + bad] + ["a line without a partner"]
    (root / "d.fr-en.fr").write_text("\n".join(src_lines) + "\n")
    (root / "d.fr-en.en").write_text("\n".join(t for _, t in good[120:160] + bad) + "\n")
    sources = [f"tsv:{root}/a.tsv", f"csv:{root}/b.csv", f"jsonl:{root}/c.jsonl", f"moses:{root}/d.fr-en"]
    return sources, expected


def write_catalogue(root, good: list[tuple[str, str]]) -> str:
    """fr/LC_MESSAGES/demo.po (English msgid -> French): good messages, one fuzzy, one untranslated, one obsolete."""
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Language": "fr"}
    for fr, en in good:
        po.append(polib.POEntry(msgid=en, msgstr=fr))
    po.append(polib.POEntry(msgid="fuzzy one", msgstr="flou", flags=["fuzzy"]))
    po.append(polib.POEntry(msgid="nobody translated this", msgstr=""))
    po.append(polib.POEntry(msgid="gone", msgstr="parti", obsolete=True))
    (root / "fr" / "LC_MESSAGES").mkdir(parents=True)
    po.save(str(root / "fr" / "LC_MESSAGES" / "demo.po"))
    return f"gettext:{root}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_corpus")
    good = sentence_pairs(200, seed=7)
    sources, expected = write_line_formats(root, good)
    sources.append(write_catalogue(root / "locale", good[160:200]))
    out = root / "out"
    argv = [
        "--out",
        str(out),
        "--train-tokenizer",
        "120",
        "--workers",
        "1",
        "--src-lang",
        "fra_Latn",
        "--trg-lang",
        "eng_Latn",
        "-q",
    ]
    for source in sources:
        argv += ["--source", source]
    assert main(argv) == 0
    return json.loads((out / "manifest.json").read_text()), expected


def test_every_record_is_accounted_for(built):
    manifest, _ = built
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["skipped"].values())
    assert counts["kept"] == 200 == manifest["rows"]["train"] + manifest["rows"]["valid"]


def test_every_kind_of_bad_line_is_named(built):
    manifest, expected = built
    skipped = manifest["counts"]["skipped"]
    for reason, n in expected.items():
        assert skipped.get(reason) == n, (reason, skipped)
    # tsv: 1 field; csv: unclosed quote; jsonl: 3 bad records; moses: uneven files
    assert skipped.get("malformed", 0) >= 1 + 1 + 3 + 1, skipped
    assert skipped.get("invalid_utf8") == 2  # tsv and jsonl
    assert (skipped.get("fuzzy"), skipped.get("untranslated"), skipped.get("obsolete")) == (1, 1, 1)
    assert skipped.get("duplicate") == 5  # a.tsv repeats 5 of its pairs
    assert sum(skipped.values()) == manifest["counts"]["read"] - 200
