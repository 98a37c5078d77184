"""Each reader on good input and on every kind of malformed input it can meet."""

import json

import datasets
import pytest

from data_prep import readers
from data_prep.records import INVALID_UTF8, MALFORMED, Pair, Skip
from data_prep.sources import ReadOptions, Source

LANGS = ("fra_Latn", "eng_Latn")


def _split(records):
    records = list(records)
    return [r for r in records if isinstance(r, Pair)], [r for r in records if isinstance(r, Skip)]


def test_tsv_good_bad_and_invalid_utf8(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(b"src\ttrg\nun chat\ta cat\nonly one field\ncaf\xe9 cr\xe8me\tcoffee\n\xef\xbb\xbfdeux\ttwo\n")
    pairs, skips = _split(readers.tsv_records(path, LANGS))
    assert [(p.src, p.trg, p.src_lang) for p in pairs] == [
        ("un chat", "a cat", "fra_Latn"),
        ("\ufeffdeux", "two", "fra_Latn"),
    ]
    assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{path}:3"), (INVALID_UTF8, f"{path}:4")]


def test_tsv_language_columns_override_defaults(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("trg_lang\tsrc\ttrg\tsrc_lang\ndeu_Latn\tein Hund\ta dog\t\n", encoding="utf-8")
    (pair,) = readers.tsv_records(path, LANGS)
    assert (pair.src, pair.trg, pair.src_lang, pair.trg_lang) == ("ein Hund", "a dog", "fra_Latn", "deu_Latn")


@pytest.mark.parametrize("content", ["", "source\ttarget\na\tb\n"])
def test_tsv_without_header_names_the_file(tmp_path, content):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(readers.SourceError, match="bad.tsv"):
        list(readers.tsv_records(path, LANGS))


def test_csv_quoting_multiline_and_bad_bytes(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'src,trg\n"un, deux","one, two"\n"ligne\nsuivante",next line\nx\n\xff\xfe,bad\n')
    pairs, skips = _split(readers.csv_records(path, LANGS))
    assert [(p.src, p.trg) for p in pairs] == [("un, deux", "one, two"), ("ligne\nsuivante", "next line")]
    assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{path}:5"), (INVALID_UTF8, f"{path}:6")]


def test_jsonl_every_malformed_kind(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [
        json.dumps({"src": "bonjour", "trg": "hello", "src_lang": "fra_Latn"}),
        "{not json",
        json.dumps(["src", "trg"]),
        json.dumps({"src": "x"}),
        json.dumps({"src": 1, "trg": "y"}),
        "",
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"src": "\xff", "trg": "b"}\n')
    pairs, skips = _split(readers.jsonl_records(path, ("und_Zzzz", "eng_Latn")))
    assert [(p.src, p.src_lang, p.trg_lang) for p in pairs] == [("bonjour", "fra_Latn", "eng_Latn")]
    assert [s.reason for s in skips] == [MALFORMED] * 5 + [INVALID_UTF8]
    assert skips[-1].where == f"{path}:7"


def test_moses_prefix_and_uneven_files(tmp_path):
    (tmp_path / "corpus.fr-en.fr").write_text("un\ndeux\ntrois\n")
    (tmp_path / "corpus.fr-en.en").write_text("one\ntwo\n")
    pairs, skips = _split(Source.parse(f"moses:{tmp_path}/corpus.fr-en").records(ReadOptions()))
    assert [(p.src, p.trg, p.src_lang, p.trg_lang) for p in pairs] == [
        ("un", "one", "fra_Latn", "eng_Latn"),
        ("deux", "two", "fra_Latn", "eng_Latn"),
    ]
    assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{tmp_path}/corpus.fr-en.fr:3")]


def test_moses_two_paths(tmp_path):
    (tmp_path / "a.de").write_text("Hund\n")
    (tmp_path / "a.en").write_text("dog\n")
    (pair,) = Source.parse(f"moses:{tmp_path}/a.de,{tmp_path}/a.en").records(ReadOptions())
    assert (pair.src_lang, pair.trg_lang) == ("deu_Latn", "eng_Latn")


def test_hf_dataset_and_datasetdict(tmp_path):
    ds = datasets.Dataset.from_dict({"src": ["un", "deux", None], "trg": ["one", "two", "three"]})
    ds.save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "nodict"))
    for name in ("plain", "dict"):
        pairs, skips = _split(readers.hf_records(tmp_path / name, LANGS))
        assert [(p.src, p.trg) for p in pairs] == [("un", "one"), ("deux", "two")]
        assert [(s.reason, s.where) for s in skips] == [(MALFORMED, f"{tmp_path / name} row 2")]
    with pytest.raises(readers.SourceError, match="expected 'train'"):
        list(readers.hf_records(tmp_path / "nodict", LANGS))


def test_flores_pairs_and_uneven_files(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "eng_Latn.dev").write_text("one\ntwo\nthree\n")
    (dev / "fra_Latn.dev").write_text("un\ndeux\ntrois\n")
    (dev / "deu_Latn.dev").write_text("eins\nzwei\n")
    pairs, skips = _split(readers.flores_records(tmp_path, "dev", []))
    assert {(p.src, p.trg, p.src_lang) for p in pairs} >= {("eins", "one", "deu_Latn"), ("trois", "three", "fra_Latn")}
    assert len(pairs) == 5 and all(p.trg_lang == "eng_Latn" for p in pairs)
    assert [s.reason for s in skips] == [MALFORMED]
    only_fr, _ = _split(readers.flores_records(tmp_path, "dev", ["fra_Latn"]))
    assert {p.src_lang for p in only_fr} == {"fra_Latn"}
    with pytest.raises(readers.SourceError, match="ita_Latn"):
        list(readers.flores_records(tmp_path, "dev", ["ita_Latn"]))
    with pytest.raises(readers.SourceError, match="devtest"):
        list(readers.flores_records(tmp_path, "devtest", []))


@pytest.mark.parametrize("spec", ["nope:/tmp/x", "tsv", "tsv:", "tsv:/does/not/exist.tsv", "moses:/tmp/x.fr-en"])
def test_bad_source_specs_name_the_flag(spec):
    with pytest.raises(readers.SourceError, match="--source|moses"):
        Source.parse(spec)
