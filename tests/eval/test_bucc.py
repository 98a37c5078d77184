"""``python -m eval --task bucc``: the BUCC 2018 layout, LASER's threshold choice, 2 ranks equal 1."""

import json
import random

import numpy as np
import pytest
import torch.multiprocessing as mp

from eval.bucc import best_threshold, bucc_f1, prf, row_ids
from eval.cli import main
from tests.eval.conftest import WORDS, _translate
from tests.eval.test_distributed import _free_port, _rank_main


def _sentence(rng: random.Random, i: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))) + f" {i}"


def write_bucc(root, pair="fr-en", split="training", n=40, planted=20, seed=0, nested=False):
    """``n`` English and ``n`` French lines; ``planted`` of the French are translations of English lines (the gold),
    the others translate sentences absent from the English side. One French line is repeated (no single id)."""
    rng = random.Random(seed)
    english = [_sentence(rng, i) for i in range(n)]
    others = [_sentence(rng, 1000 + i) for i in range(n - planted)]
    french = [(_translate(e, "fra_Latn"), j) for j, e in enumerate(english[:planted])]
    french += [(_translate(o, "fra_Latn"), None) for o in others]
    rng.shuffle(french)
    french.append(french[0])  # the same sentence on a second line: dropped from the candidates, as LASER drops it
    base = root / pair if nested else root
    base.mkdir(parents=True, exist_ok=True)
    src, trg = pair.split("-")
    fr_lines = [f"{src}-{split}-{i:06d}\t{s}" for i, (s, _) in enumerate(french)]
    en_lines = [f"{trg}-{split}-{j:06d}\t{s}" for j, s in enumerate(english)]
    gold = [f"{src}-{split}-{i:06d}\t{trg}-{split}-{j:06d}" for i, (_, j) in enumerate(french[:-1]) if j is not None]
    gold = [g for g in gold if not g.startswith(fr_lines[0].split("\t")[0] + "\t")]  # the repeated sentence
    for name, lines in ((f"{pair}.{split}.{src}", fr_lines), (f"{pair}.{split}.{trg}", en_lines)):
        (base / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (base / f"{pair}.{split}.gold").write_text("\n".join(gold) + "\n", encoding="utf-8")
    return base


def test_best_threshold_is_laser_midpoint():
    cand = {("a", "1"): 1.5, ("b", "2"): 1.4, ("c", "3"): 1.3, ("d", "4"): 1.2}
    gold = {("a", "1"), ("c", "3")}
    # F1 by rank: 2/3, 1/2, 4/5, 2/3 -> best after the 3rd candidate: midpoint of 1.3 and 1.2
    assert best_threshold(cand, gold) == pytest.approx(1.25)
    assert best_threshold(cand, {("d", "4")}) == 1.2  # best at the last candidate: its own score
    assert best_threshold(cand, {("x", "9")}) == 0.0  # no correct candidate: LASER's initial 0
    assert prf([("a", "1"), ("b", "2"), ("c", "3")], gold) == {
        "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "correct": 2, "gold": 2,
    }  # fmt: skip


def test_row_ids_drop_repeated_sentences():
    ids, sents = ["s1", "s2", "s3"], ["a b", " c ", "a b"]
    assert row_ids(ids, sents, ["a b", "c"]) == [None, "s2"]


def test_bucc_f1_on_planted_embeddings():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 32)).astype(np.float32)
    y = np.concatenate([x[:30] + 0.2 * rng.standard_normal((30, 32)), rng.standard_normal((50, 32))]).astype(np.float32)
    gold = {(str(i), str(i)) for i in range(30)}
    tuned = bucc_f1(x, y, gold)
    assert tuned["f1"] == 1.0 and tuned["extracted"] == 30
    fixed = bucc_f1(x, y, gold, threshold=tuned["threshold"] + 10)
    assert fixed["extracted"] == 0 and fixed["f1"] == 0.0


def _bucc_args(root, out, *extra):
    return ["--task", "bucc", "--bucc", str(root), "--pair", "fr-en", "--model", "char3gram", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def test_bucc_end_to_end(tmp_path):
    root = tmp_path / "bucc2018"
    write_bucc(root, split="training", seed=0, nested=True)
    write_bucc(root, split="test", seed=1, nested=True)
    assert main(_bucc_args(root, tmp_path / "out")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    entry = results["languages"]["fr-en"]
    assert results["task"] == "bucc" and results["split"] == "test" and results["threshold_split"] == "training"
    gold = (root / "fr-en" / "fr-en.test.gold").read_text().splitlines()
    assert entry["gold"] == len(gold) >= 19 and entry["f1"] > 0.9 and entry["threshold_split_f1"] > 0.9
    assert results["average"]["f1"] == entry["f1"] and results["average"]["f1_mean"] == entry["f1"]
    extracted = (tmp_path / "out" / "fr-en.test.extracted.tsv").read_text().splitlines()
    assert len(extracted) == entry["extracted"] and all(line.startswith("fr-test-") for line in extracted)
    assert "| fr-en |" in (tmp_path / "out" / "results.md").read_text()


def test_bucc_two_ranks_equal_one(tmp_path):
    for split, seed in (("training", 0), ("sample", 2)):
        write_bucc(tmp_path / "b", split=split, seed=seed)
    args = _bucc_args(tmp_path / "b", tmp_path / "one", "--split", "sample")
    assert main(args) == 0
    two = _bucc_args(tmp_path / "b", tmp_path / "two", "--split", "sample")
    mp.spawn(_rank_main, args=(2, _free_port(), two), nprocs=2, join=True)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one.pop("timing")["world_size"] == 1 and two.pop("timing")["world_size"] == 2
    assert one == two


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        ("none", [], "--task bucc needs --pair"),
        ("no_gold", ["--pair", "fr-en"], "no fr-en.training.gold"),
        ("bad_line", ["--pair", "fr-en"], "fr-en.training.fr:3: expected 2 tab-separated fields"),
        ("ok", ["--pair", "de-en"], "no de-en.training.de there or in"),
    ],
)
def test_bad_bucc_input_is_a_clear_error(tmp_path, capsys, setup, flags, message):
    root = write_bucc(tmp_path / "b")
    write_bucc(root, split="test", seed=1)
    if setup == "no_gold":
        (root / "fr-en.training.gold").unlink()
    elif setup == "bad_line":
        path = root / "fr-en.training.fr"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:2] + ["no tab here"] + lines[3:]) + "\n")
    argv = ["--task", "bucc", "--bucc", str(root), "--model", "char3gram", "--out", str(tmp_path / "o"), *flags]
    assert main(argv) == 2 and not (tmp_path / "o").exists()
    assert message in capsys.readouterr().err
