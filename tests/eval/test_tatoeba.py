"""``python -m eval --task tatoeba``: LASER's Tatoeba layout, both directions per language, errors by index."""

import json
import random

import pytest

from eval.char3gram import Char3gramEncoder
from eval.cli import main
from eval.xsim import count_errors, nearest
from tests.eval.conftest import WORDS, _translate

LANGS = {"fra": "fra_Latn", "deu": "deu_Latn", "spa": "spa_Latn"}


def write_tatoeba(root, n=30, seed=0):
    """Each language its own English sentences (as in LASER's set), line i of both files a pair."""
    root.mkdir(parents=True, exist_ok=True)
    for k, (code, flores) in enumerate(LANGS.items()):
        rng = random.Random(seed + k)
        english = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]
        (root / f"tatoeba.{code}-eng.eng").write_text("\n".join(english) + "\n", encoding="utf-8")
        lines = [_translate(s, flores) for s in english]
        (root / f"tatoeba.{code}-eng.{code}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _run(root, out, *flags):
    argv = ["--task", "tatoeba", "--tatoeba", str(root), "--model", "char3gram", "--out", str(out), "--no-progress"]
    return main([*argv, *flags])


def test_both_directions_match_direct_scoring(tmp_path):
    root = write_tatoeba(tmp_path / "tatoeba")
    assert _run(root, tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["languages"]) == ["deu", "fra", "spa"] and results["margin"] == "absolute"
    enc = Char3gramEncoder()
    for code, e in results["languages"].items():
        x = enc.encode((root / f"tatoeba.{code}-eng.{code}").read_text().splitlines())
        y = enc.encode((root / f"tatoeba.{code}-eng.eng").read_text().splitlines())
        assert e["xx_eng"]["errors"] == count_errors(nearest(x, y, "absolute", 4))
        assert e["eng_xx"]["errors"] == count_errors(nearest(y, x, "absolute", 4))
        assert e["n"] == 60 and e["errors"] == e["xx_eng"]["errors"] + e["eng_xx"]["errors"]
    total = sum(e["errors"] for e in results["languages"].values())
    assert results["average"]["errors"] == total and results["average"]["n"] == 180
    assert results["average"]["xx_eng"]["n"] == 90 and results["comparison"] == "index"
    assert "| **average** |" in (tmp_path / "out" / "results.md").read_text()


def test_langs_and_margin(tmp_path):
    root = write_tatoeba(tmp_path / "tatoeba")
    assert _run(root, tmp_path / "out", "--langs", "fra", "--margin", "ratio") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["languages"]) == ["fra"] and results["margin"] == "ratio"


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (None, ["--langs", "fra,xho"], "--langs: missing xho in"),
        ("no_eng", [], "tatoeba.deu-eng.eng: missing (the English side of tatoeba.deu-eng.deu)"),
        ("short", [], "tatoeba.fra-eng.fra has 29 lines but"),
        ("empty_dir", [], "no tatoeba.xxx-eng.xxx files"),
    ],
)
def test_bad_layout_is_a_clear_error(tmp_path, capsys, setup, flags, message):
    root = write_tatoeba(tmp_path / "tatoeba")
    if setup == "no_eng":
        (root / "tatoeba.deu-eng.eng").unlink()
    elif setup == "short":
        path = root / "tatoeba.fra-eng.fra"
        path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    elif setup == "empty_dir":
        root = tmp_path / "empty"
        root.mkdir()
    assert _run(root, tmp_path / "o", *flags) == 2 and not (tmp_path / "o").exists()
    assert message in capsys.readouterr().err
