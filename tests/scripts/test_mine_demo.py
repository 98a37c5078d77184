"""The demo's mining line: shuffled sides mined back (gold kept through the shuffles, repeated sentences left out),
the script on a tiny FLORES layout with char3gram and an untrained tiny model, the demo stage skipped when
unchanged, and the report's section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import demo
from scripts.common import build_untrained
from scripts.mine_demo import main, mine_languages, mining_lines, pick_languages
from scripts.report import main as report_main
from tests.pipeline.conftest import TINY_MODEL_FLAGS
from tests.pipeline.test_xsim_train import N_LINES, make_flores
from tests.scripts.test_report import LANGS, fake_eval, fake_manifest, fake_run


class OneHot:
    """Sentence `x7` or `e7` -> the unit vector 7: a perfect encoder whose answers are known."""

    def encode(self, sentences: list[str]) -> np.ndarray:
        out = np.zeros((len(sentences), 64), np.float32)
        out[np.arange(len(sentences)), [int(s[1:]) for s in sentences]] = 1.0
        return out + 0.01 * np.random.default_rng(len(sentences)).random(out.shape, dtype=np.float32)


def test_shuffled_sides_are_mined_back_with_the_gold_of_the_original_lines():
    n = 30
    texts = {"eng_Latn": [f"e{i}" for i in range(n)], "fra_Latn": [f"x{i}" for i in range(n)]}
    texts["deu_Latn"] = [*texts["fra_Latn"][:-1], "x3"]  # line 29 repeats line 3: no single answer, left out
    result = mine_languages(OneHot(), texts, ["deu_Latn", "fra_Latn"], "eng_Latn")
    assert (result["fra_Latn"]["f1"], result["fra_Latn"]["gold"]) == (1.0, n)
    assert (result["deu_Latn"]["f1"], result["deu_Latn"]["gold"]) == (1.0, n - 2)  # lines 3 and 29 out
    assert pick_languages([f"l{i:02d}" for i in range(30)], "every5") == ["l00", "l05", "l10", "l15", "l20", "l25"]


def test_script_on_tiny_flores_with_char3gram_and_an_untrained_model(prepared, tmp_path, capsys):
    flores = make_flores(tmp_path / "testset")
    argv = ["--flores", str(flores), "--split", "dev", "--langs", "all"]
    assert main(["--model", "char3gram", *argv, "--out", str(tmp_path / "mine-char3gram")]) == 0
    hf = build_untrained(str(prepared), tmp_path / "untrained-hf", "tiny-cpu", seed=0, extra=TINY_MODEL_FLAGS)
    assert main(["--model", str(hf), *argv, "--out", str(tmp_path / "mine-untrained")]) == 0
    for label in ("char3gram", "untrained"):
        r = json.loads((tmp_path / f"mine-{label}" / "mine.json").read_text())
        assert list(r["languages"]) == ["deu_Latn", "fra_Latn"] and r["split"] == "dev"
        assert r["average"]["gold"] == 2 * N_LINES and 0.0 <= r["average"]["f1"] <= 1.0
    lines = "\n".join(mining_lines(tmp_path))
    assert "Pooled F1: untrained **" in lines and "char3gram **" in lines and "over 2 languages: deu_Latn" in lines
    assert main(["--model", "char3gram", *argv[:4], "--langs", "ita_Latn", "--out", str(tmp_path / "x")]) == 2
    assert "--langs ita_Latn: not in" in capsys.readouterr().err


def test_demo_stage_mines_each_model_there_is_once(tmp_path, monkeypatch):
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "manifest.json").write_text("{}")
    (tmp_path / "out" / "untrained-hf").mkdir(parents=True)  # no trained-hf: its mining is skipped
    cmds = []
    monkeypatch.setattr(demo, "run_stage", lambda name, cmd, log, **kw: cmds.append(cmd) or 0.0)
    argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--stages", "mine"]
    assert demo.main(argv) == 0
    models = [c[c.index("--model") + 1] for c in cmds]
    assert models == [str(tmp_path / "out" / "untrained-hf"), "char3gram"]
    assert all(c[1:3] == ["-m", "scripts.mine_demo"] and str(tmp_path / "data" / "testset") in c for c in cmds)
    assert demo.main(argv) == 0 and len(cmds) == 2  # unchanged: skipped


def test_report_has_the_mining_line(tmp_path, capsys):
    out = tmp_path / "demo"
    fake_run(out / "train")
    fake_eval(out / "trained", dict(zip(LANGS, (10, 12, 20))))
    for label, f1 in (("untrained", 0.1), ("trained", 0.5)):
        (out / f"mine-{label}").mkdir(parents=True)
        entry = {"languages": {"fra_Latn": {}}, "average": {"f1": f1}, "split": "devtest", "target": "eng_Latn"}
        (out / f"mine-{label}" / "mine.json").write_text(json.dumps({**entry, "seed": 0}))
    assert report_main([str(out), "--manifest", str(fake_manifest(tmp_path / "m.json"))]) == 0
    text = (out / "report.md").read_text()
    assert "## Bitext mining F1 % (held-out devtest split" in text
    assert "Pooled F1: untrained **10.00**, trained **50.00**." in text and "over 1 languages: fra_Latn" in text


@pytest.mark.parametrize("spec", ["all", "every5"])
def test_language_choice_is_sorted(spec):
    assert pick_languages(["b", "a", "c"], spec) == (["a", "b", "c"] if spec == "all" else ["a"])


def test_bucc_out_is_the_mining_set_the_training_hook_scores(tmp_path, capsys):
    """--bucc-out writes the shuffled sides and gold; read back and scored as MineEvaluator scores them, they give the
    F1 that mining the same split in the script gives (same shuffles, repeated sentences out of the gold)."""
    from eval.bucc import bucc_f1, read_split, row_ids, unify
    from eval.encode import load_encoder
    from eval.mine_hook import mining_set_fingerprint

    rng = np.random.default_rng(3)
    words = [f"w{i:02d}" for i in range(40)]
    eng = [" ".join(rng.choice(words, size=int(rng.integers(3, 8)))) + f" n{i}" for i in range(40)]
    texts = {"eng_Latn": eng, "fra_Latn": [s.replace("w", "v") + "e" for s in eng]}
    deu = [" ".join(s.split()[:2][::-1]) for s in eng]  # two words of each line, no number: often ambiguous
    texts["deu_Latn"] = [*deu[:-1], deu[5]]  # the last line repeats line 5: both out of the gold
    root = tmp_path / "flores" / "dev"
    root.mkdir(parents=True)
    for lang, lines in texts.items():
        (root / f"{lang}.dev").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["--flores", str(tmp_path / "flores"), "--split", "dev", "--langs", "all", "--bucc-out", str(tmp_path / "b")]
    assert main(argv) == 0
    assert "--mine-pair deu_Latn-eng_Latn,fra_Latn-eng_Latn" in capsys.readouterr().out
    encoder = load_encoder("char3gram", device="cpu")
    expected = mine_languages(encoder, texts, ["deu_Latn", "fra_Latn"], "eng_Latn")
    parts = {}
    for lang in ("deu_Latn", "fra_Latn"):
        part = parts[lang] = read_split(tmp_path / "b", f"{lang}-eng_Latn", "sample", need_gold=True)
        src, trg = unify(part.src_sents), unify(part.trg_sents)
        ids = {
            "src_ids": row_ids(part.src_ids, part.src_sents, src),
            "trg_ids": row_ids(part.trg_ids, part.trg_sents, trg),
        }
        got = bucc_f1(encoder.encode(src), encoder.encode(trg), part.gold, k=4, device="cpu", **ids)
        assert len(part.gold) == expected[lang]["gold"] == (38 if lang == "deu_Latn" else 40)
        for key in ("f1", "precision", "recall", "threshold", "extracted"):
            assert got[key] == expected[lang][key], (lang, key)
    assert 0.0 < expected["deu_Latn"]["f1"] < 1.0  # a score that could differ, not a perfect one
    assert len(mining_set_fingerprint("sample", parts)) == 64
    with pytest.raises(SystemExit) as stop:  # neither a model to mine with nor --bucc-out
        main(["--flores", str(tmp_path / "flores"), "--split", "dev"])
    assert stop.value.code == 2 and "--model and --out are required" in capsys.readouterr().err
