"""End to end: `python -m data_prep` on small synthetic corpora, the manifest, counts, reproducibility."""

import json

import datasets
import pytest
from transformers import AutoTokenizer

from data_prep.__main__ import main
from data_prep.prepare import PrepConfig, prepare
from tests.data_prep.helpers import sentence_pairs, write_tsv

BAD_LINES = [
    "only-one-field",  # malformed
    "  \tan empty source",  # empty
    "a\x07bell\tcontrol",  # control_chars
    "same text\tsame text",  # identical
    "x\t" + "a very much longer target side " * 3,  # length_ratio
    "long " * 300 + "\tshort",  # too_long (1500 characters > 1000)
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    pairs = sentence_pairs(400)
    path = write_tsv(root / "a.tsv", pairs + pairs[:10], langs=None)  # 10 exact duplicates
    with open(path, "ab") as f:
        f.write(("\n".join(BAD_LINES) + "\n").encode() + b"caf\xe9\tcoffee\n")
    return path


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    argv = ["--source", f"tsv:{corpus}", "--out", str(out), "--train-tokenizer", "200", "--workers", "2"]
    argv += ["--partitions", "3", "--src-lang", "fra_Latn", "--trg-lang", "eng_Latn", "-q"]
    assert main(argv) == 0
    return out


def test_counts_add_up_with_every_reason(built):
    counts = json.loads((built / "manifest.json").read_text())["counts"]
    assert counts["read"] == 410 + len(BAD_LINES) + 1
    assert counts["read"] == counts["kept"] + sum(counts["skipped"].values())
    assert counts["skipped"] == {
        "control_chars": 1, "duplicate": 10, "empty": 1, "identical": 1, "invalid_utf8": 1, "length_ratio": 1,
        "malformed": 1, "too_long": 1,
    }  # fmt: skip
    assert counts["kept"] == 400


def test_output_contract(built):
    manifest = json.loads((built / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(built / "tokenizer"))
    info = manifest["tokenizer"]
    assert info["special_ids"] == {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": info["vocab_size"] - 1}
    assert len(tok) == info["vocab_size"] and tok.mask_token_id == info["vocab_size"] - 1
    train, valid = datasets.load_from_disk(str(built / "train")), datasets.load_from_disk(str(built / "valid"))
    assert len(train) + len(valid) == manifest["counts"]["kept"] and len(valid) == 8  # --min-valid default
    for ds in (train, valid):
        assert ds.features["src_ids"].feature.dtype == "int32" and ds.features["trg_ids"].feature.dtype == "int32"
        assert set(ds["src_lang"]) == {"fra_Latn"} and set(ds["trg_lang"]) == {"eng_Latn"}
    row = train[0]
    text = tok.decode(row["src_ids"], skip_special_tokens=True)
    assert row["src_ids"] == tok(text)["input_ids"] and row["src_ids"][0] == 0 and row["src_ids"][-1] == 2
    rows = {s["split"]: 0 for s in manifest["shards"]}
    for s in manifest["shards"]:
        rows[s["split"]] += s["rows"]
        assert (built / s["file"]).is_file() and len(s["sha256"]) == 64
    assert rows == {"train": len(train), "valid": len(valid)} == manifest["rows"]


def test_trained_tokenizer_round_trips(built):
    tok = AutoTokenizer.from_pretrained(str(built / "tokenizer"))
    for text in ["le chat court vite sur la maison", "the green tree over small water"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_rerun_is_a_no_op_and_force_rebuilds_identically(built, corpus, capsys):
    manifest = json.loads((built / "manifest.json").read_text())
    shard = built / manifest["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    argv = ["--source", f"tsv:{corpus}", "--out", str(built), "--train-tokenizer", "200", "--workers", "1", "-q"]
    argv += ["--src-lang", "fra_Latn", "--trg-lang", "eng_Latn"]
    assert main(argv) == 0  # workers/partitions do not change the rows, so the fingerprint matches
    assert shard.stat().st_mtime_ns == mtime
    assert main([*argv, "--force", "--partitions", "3"]) == 0  # rebuilt on 1 process: same bytes
    again = json.loads((built / "manifest.json").read_text())
    assert shard.stat().st_mtime_ns != mtime
    assert again["shards"] == manifest["shards"] and again["tokenizer"] == manifest["tokenizer"]


def test_truncation_is_counted(corpus, tmp_path):
    cfg = PrepConfig(sources=[f"tsv:{corpus}"], out=str(tmp_path / "o"), train_tokenizer=120, max_tokens=8, workers=1)
    manifest = prepare(cfg)
    train = datasets.load_from_disk(str(tmp_path / "o" / "train"))
    assert max(len(x) for x in train["src_ids"]) == 8 and all(x[-1] == 2 for x in train["src_ids"])
    n_long = sum(len(tok_ids) == 8 for tok_ids in train["src_ids"])
    assert 0 < manifest["truncated"]["src"] <= n_long + manifest["rows"]["valid"]
    assert manifest["token_lengths"]["src"]["max"] == 8


def test_exclude_flores_removes_test_sentences(corpus, tmp_path):
    (tmp_path / "flores" / "devtest").mkdir(parents=True)
    pairs = sentence_pairs(400)
    (tmp_path / "flores" / "devtest" / "eng_Latn.devtest").write_text(f"{pairs[0][1].upper()}!\n{pairs[1][1]}\n")
    cfg = PrepConfig(sources=[f"tsv:{corpus}"], out=str(tmp_path / "o"), train_tokenizer=120, workers=1,
                     exclude_flores=str(tmp_path / "flores"))  # fmt: skip
    manifest = prepare(cfg)
    # pairs 0 and 1 and their duplicates (matching ignores case and punctuation); none is left to deduplicate
    assert manifest["counts"]["skipped"]["test_overlap"] == 4 and manifest["counts"]["skipped"]["duplicate"] == 8


def test_refuses_foreign_dir_and_needs_one_tokenizer(corpus, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("not a prepared dir")
    assert main(["--source", f"tsv:{corpus}", "--out", str(tmp_path), "--train-tokenizer", "100", "-q"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()
    with pytest.raises(SystemExit):
        main(["--source", f"tsv:{corpus}", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--max-tokens"):
        prepare(PrepConfig(sources=[f"tsv:{corpus}"], out=str(tmp_path / "y"), train_tokenizer=100, max_tokens=2))


def test_pretrained_tokenizer_gives_the_same_ids(built, corpus, tmp_path):
    argv = ["--source", f"tsv:{corpus}", "--out", str(tmp_path / "o"), "--tokenizer", str(built / "tokenizer")]
    argv += ["--src-lang", "fra_Latn", "--trg-lang", "eng_Latn", "--workers", "1", "--partitions", "3", "-q"]
    assert main(argv) == 0
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "o", built))
    assert ours["tokenizer"]["name"] == str(built / "tokenizer")
    assert ours["tokenizer"]["special_ids"] == theirs["tokenizer"]["special_ids"]
    assert [s["sha256"] for s in ours["shards"]] == [s["sha256"] for s in theirs["shards"]]


def test_several_sources_max_pairs_and_tiny_valid(tmp_path):
    pairs = sentence_pairs(30)
    a = write_tsv(tmp_path / "a.tsv", pairs[:20])
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"src": s, "trg": t, "src_lang": "fra_Latn"}) + "\n" for s, t in pairs[20:]))
    cfg = PrepConfig(sources=[f"tsv:{a}", f"jsonl:{b}"], out=str(tmp_path / "o"), train_tokenizer=100, workers=1)
    manifest = prepare(cfg)
    assert manifest["counts"]["by_source"][f"jsonl:{b}"]["read"] == 10 and manifest["counts"]["kept"] == 30
    assert manifest["rows"] == {"train": 22, "valid": 8}
    assert manifest["language_pairs"] == {"fra_Latn-eng_Latn": 20, "fra_Latn-und_Zzzz": 10}
    cfg = PrepConfig(sources=[f"tsv:{a}", f"jsonl:{b}"], out=str(tmp_path / "p"), train_tokenizer=100,
                     max_pairs=5, min_valid=20, workers=1)  # fmt: skip
    manifest = prepare(cfg)
    assert manifest["counts"]["read"] == 5 and manifest["stopped_at_max_pairs"]
    assert manifest["rows"] == {"train": 1, "valid": 4}  # min_valid never empties train


def test_nothing_kept(built, tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("src\ttrg\nsame\tsame\n")
    with pytest.raises(ValueError, match="no pair survived cleaning"):  # nothing to train a tokenizer on
        prepare(PrepConfig(sources=[f"tsv:{path}"], out=str(tmp_path / "o"), train_tokenizer=100, workers=1))
    cfg = PrepConfig(sources=[f"tsv:{path}"], out=str(tmp_path / "p"), tokenizer=str(built / "tokenizer"), workers=1)
    manifest = prepare(cfg)  # with a given tokenizer: empty but loadable splits
    counts = manifest["counts"]
    assert (counts["read"], counts["kept"], counts["skipped"]) == (1, 0, {"duplicate": 0, "identical": 1})
    assert len(datasets.load_from_disk(str(tmp_path / "p" / "train"))) == 0 and manifest["rows"]["train"] == 0


def test_tokenizer_alpha_balances_the_sample_over_language_pairs(tmp_path):
    pairs = sentence_pairs(330)
    big = write_tsv(tmp_path / "big.tsv", pairs[:300])
    small = write_tsv(tmp_path / "small.tsv", [(f"de {s}", t) for s, t in pairs[300:]], langs=("deu_Latn", "eng_Latn"))
    drawn = {}
    for alpha in (1.0, 0.0):
        cfg = PrepConfig(sources=[f"tsv:{big}", f"tsv:{small}"], out=str(tmp_path / f"o{alpha}"), train_tokenizer=80,
                         tokenizer_max_sentences=60, tokenizer_alpha=alpha, workers=1)  # fmt: skip
        drawn[alpha] = prepare(cfg)["tokenizer"]["sample"]
    assert drawn[1.0]["deu_Latn-eng_Latn"] < 8 < drawn[1.0]["fra_Latn-eng_Latn"]  # ~30 x 30/330 vs ~30 x 300/330
    assert (
        8 < drawn[0.0]["deu_Latn-eng_Latn"]
        and abs(drawn[0.0]["deu_Latn-eng_Latn"] - drawn[0.0]["fra_Latn-eng_Latn"]) < 12
    )
