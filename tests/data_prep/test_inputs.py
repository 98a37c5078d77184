"""Inputs at scale: globs, Parquet by row group with column mapping, and the NLLB/OPUS `translation` layout with
`--min-score` from Parquet, JSONL and a `datasets` folder (all made here, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.__main__ import main
from data_prep.layout import LOW_SCORE, Layout
from data_prep.records import MALFORMED, Pair, Skip, SourceError
from data_prep.sources import ReadOptions, Source
from tests.data_prep.helpers import sentence_pairs, write_tsv

NLLB = [  # (translation, laser_score): the hub layout of NLLB / OPUS-derived sets
    ({"eng_Latn": "the red house", "fra_Latn": "la maison rouge"}, 1.31),
    ({"eng_Latn": "a small tree", "fra_Latn": "un petit arbre"}, 1.02),
    ({"eng_Latn": "the sun", "fra_Latn": "le soleil"}, None),
    ({"eng_Latn": "the moon is big", "fra_Latn": "la lune est grande"}, 1.2),
]


def _records(spec: str, opts: ReadOptions) -> tuple[list[Pair], list[Skip]]:
    records = list(Source.parse(spec).records(opts))
    return [r for r in records if isinstance(r, Pair)], [r for r in records if isinstance(r, Skip)]


def test_glob_is_sorted_and_an_empty_glob_is_refused(tmp_path, capsys):
    for name in ("b.tsv", "a.tsv", "c.tsv"):
        write_tsv(tmp_path / name, [(f"{name} un", f"{name} one")])
    source = Source.parse(f"tsv:{tmp_path}/*.tsv")
    assert [p.name for p in source.files(ReadOptions())] == ["a.tsv", "b.tsv", "c.tsv"]
    assert [u.path for u in source.units(0, ReadOptions())] == [str(tmp_path / n) for n in ("a.tsv", "b.tsv", "c.tsv")]
    assert main(["--source", f"tsv:{tmp_path}/*.csv", "--out", str(tmp_path / "o"), "--train-tokenizer", "60"]) == 2
    assert "matches no file" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_parquet_by_row_group_with_column_mapping(tmp_path):
    pairs = sentence_pairs(25)
    table = pa.table({"fr": [s for s, _ in pairs], "en": [t for _, t in pairs], "lang": ["fra_Latn"] * 25})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=10)
    opts = ReadOptions(trg_lang="eng_Latn", columns=("fr", "en", "lang", "trg_lang"))
    units = Source.parse(f"parquet:{tmp_path}").units(3, opts)  # a folder: its *.parquet files
    assert [(u.source, u.part, u.first) for u in units] == [(3, 0, 0), (3, 1, 10), (3, 2, 20)]
    third = list(Source.parse(f"parquet:{tmp_path}/p.parquet").read(units[2], opts))
    assert [(p.src, p.trg, p.src_lang, p.trg_lang) for p in third] == [
        (s, t, "fra_Latn", "eng_Latn") for s, t in pairs[20:]
    ]
    assert third[0].where == f"{tmp_path / 'p.parquet'} row 20"
    bad = ReadOptions(columns=("source", "en", "lang", "trg_lang"))
    with pytest.raises(SourceError, match=r"lack \['source'\] \(--src-col/--trg-col\)"):
        _records(f"parquet:{tmp_path}/p.parquet", bad)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_translation_layout_and_min_score(tmp_path, fmt):
    rows = {"translation": [t for t, _ in NLLB], "laser_score": [s for _, s in NLLB]}
    if fmt == "parquet":
        pq.write_table(pa.table(rows), tmp_path / "d.parquet", row_group_size=2)
        spec, where = f"parquet:{tmp_path / 'd.parquet'}", f"{tmp_path / 'd.parquet'} row"
    elif fmt == "jsonl":
        lines = [json.dumps({"translation": t, "laser_score": s}) for t, s in NLLB] + ['{"translation": "x"}']
        (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
        spec, where = f"jsonl:{tmp_path / 'd.jsonl'}", f"{tmp_path / 'd.jsonl'}:"
    else:
        datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "d"))
        spec, where = f"hf:{tmp_path / 'd'}", f"{tmp_path / 'd'} row"
    pairs, skips = _records(spec, ReadOptions(src_lang="fra_Latn", min_score=1.1))
    assert [(p.src, p.trg, p.src_lang, p.trg_lang) for p in pairs] == [
        ("la maison rouge", "the red house", "fra_Latn", "eng_Latn"),  # --src-lang picks the source key
        ("la lune est grande", "the moon is big", "fra_Latn", "eng_Latn"),
    ]
    assert [s.reason for s in skips[:2]] == [LOW_SCORE, LOW_SCORE] and skips[0].detail == "score 1.02 < 1.1"
    assert "no score" in skips[1].detail and all(s.where.startswith(where) for s in skips)
    assert [s.reason for s in skips[2:]] == ([MALFORMED] if fmt == "jsonl" else [])
    everything, _ = _records(spec, ReadOptions())  # no --min-score: every pair, the first key as the source
    assert len(everything) == 4 and everything[0].src_lang == "eng_Latn"


def test_min_score_without_a_score_column_is_refused(tmp_path, capsys):
    pairs = sentence_pairs(10)
    pq.write_table(pa.table({"src": [s for s, _ in pairs], "trg": [t for _, t in pairs]}), tmp_path / "p.parquet")
    argv = ["--source", f"parquet:{tmp_path / 'p.parquet'}", "--out", str(tmp_path / "o"), "--train-tokenizer", "60"]
    assert main([*argv, "--min-score", "1.0", "-q", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parquet:") and "--min-score needs a score column" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SourceError, match="no score column 'margin'"):
        Layout(score="margin").resolve(["src", "trg"], "x")


def test_nllb_folder_end_to_end_counts_low_scores(tmp_path):
    pairs = sentence_pairs(60)
    rows = {
        "translation": [{"eng_Latn": t, "fra_Latn": s} for s, t in pairs],
        "laser_score": [1.0 + (i % 4) / 10 for i in range(60)],  # 1.0, 1.1, 1.2, 1.3: a quarter below 1.1
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "nllb"))
    out = tmp_path / "o"
    argv = ["--source", f"hf:{tmp_path / 'nllb'}", "--out", str(out), "--train-tokenizer", "60", "--min-score", "1.1"]
    assert main([*argv, "--src-lang", "fra_Latn", "--workers", "1", "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == {"duplicate": 0, LOW_SCORE: 15} and manifest["counts"]["kept"] == 45
    assert manifest["language_pairs"] == {"fra_Latn-eng_Latn": 45}
    lines = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [e["where"] for e in lines] == [f"{tmp_path / 'nllb'} row {i}" for i in range(0, 60, 4)]
    assert {e["source"] for e in manifest["inputs"]} == {f"hf:{tmp_path / 'nllb'}"}
    assert all(len(e["sha256"]) == 64 for e in manifest["inputs"])


def test_hf_folder_is_read_in_row_ranges(tmp_path, monkeypatch):
    import data_prep.sources as sources

    monkeypatch.setattr(sources, "HF_UNIT_ROWS", 7)
    pairs = sentence_pairs(20)
    datasets.Dataset.from_dict({"src": [s for s, _ in pairs], "trg": [t for _, t in pairs]}).save_to_disk(
        str(tmp_path / "d")
    )
    source = Source.parse(f"hf:{tmp_path / 'd'}")
    units = source.units(0, ReadOptions())
    assert [(u.part, u.stop) for u in units] == [(0, 7), (7, 14), (14, 20)] and all(u.weight > 0 for u in units)
    read = [p.src for u in units for p in source.read(u, ReadOptions())]
    assert read == [s for s, _ in pairs] and Path(units[0].path).name == "d"


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
@pytest.mark.parametrize("range_bytes", [1, 37, 200, 10_000])
def test_byte_ranges_read_every_line_once_with_its_number(tmp_path, fmt, range_bytes):
    pairs = sentence_pairs(40)
    if fmt == "tsv":
        path = write_tsv(tmp_path / "a.tsv", pairs)
        with open(path, "ab") as f:
            f.write(
                b"only one field\ncaf\xe9\tcoffee\tfra_Latn\teng_Latn\n" + b"x" * 300 + b"\tlong\tfra_Latn\teng_Latn"
            )
    else:
        path = tmp_path / "a.jsonl"
        lines = [json.dumps({"src": s, "trg": t}) for s, t in pairs] + ["{broken", json.dumps({"src": "y" * 300})]
        path.write_text("\n".join(lines) + "\n")
    source, opts = Source.parse(f"{fmt}:{path}"), ReadOptions()
    whole = list(source.read(source.units(0, opts)[0], opts))
    units = source.units(0, opts, range_bytes)
    assert sum(u.weight for u in units) == path.stat().st_size and {u.first for u in units} == {0}
    assert len(units) == (1 if range_bytes >= path.stat().st_size else -(-path.stat().st_size // range_bytes))
    pieces = [r for u in units for r in source.read(u, opts)]
    assert pieces == whole and len(whole) == 43 - (fmt == "jsonl")  # header: not a record
    assert whole[-1].where == f"{path}:{len(whole) + (fmt == 'tsv')}"
