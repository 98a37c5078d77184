"""The offline default: multi-way test set in FLORES layout, disjoint from the training pairs."""

import json
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

from data_prep.clean import overlap_key
from data_prep.offline import main
from data_prep.testset import is_sentence
from tests.data_prep.helpers import write_mo

LOCALES = {
    "fr": "fra_Latn",
    "de": "deu_Latn",
    "es": "spa_Latn",
    "it": "ita_Latn",
    "pt_BR": "por_Latn",
    "ru": "rus_Cyrl",
}
SUBJECTS = ["The printer", "This window", "Your backup", "The server", "A new folder", "The last update", "Each user"]
VERBS = ["could not be opened", "was saved again", "is now ready to use", "has stopped working", "needs more space"]
PLACES = ["on this computer.", "over the network.", "right now.", "for every account.", "in the background."]
SENTENCES = [f"{s} {v} {p}" for s in SUBJECTS for v in VERBS for p in PLACES][:120]


def _translate(locale: str, text: str) -> str:
    """A fake but distinct translation per language (Cyrillic for ru, so scripts differ)."""
    words = " ".join(reversed(text.rstrip(".").split()))
    if locale == "ru":
        return words.translate(str.maketrans("aeioprstnl", "аеиорпстнл")) + "."
    return f"{locale} {words}."


@pytest.fixture(scope="module")
def locale_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("locale")
    everywhere, some = SENTENCES[:80], SENTENCES[80:]
    ui = [f"_Item {i}" for i in range(60)] + [f"Delete %d files in folder {i}" for i in range(30)]
    for i, (locale, _) in enumerate(LOCALES.items()):
        entries = [(m.encode(), _translate(locale, m).encode()) for m in everywhere + ui]
        entries += [(m.encode(), _translate(locale, m).encode()) for m in some if i < 2]  # only in 2 languages
        write_mo(root / locale / "LC_MESSAGES" / "app.mo", entries)
        # another package repeats a test sentence with other case/punctuation: must not reach training either
        near = everywhere[i].lower().rstrip(".")
        write_mo(root / locale / "LC_MESSAGES" / "other.mo", [(near.encode(), _translate(locale, near).encode())])
    return root


@pytest.fixture(scope="module")
def offline_out(locale_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline")
    argv = ["--out", str(out), "--locale-root", str(locale_tree), "--vocab-size", "300", "--min-langs", "4"]
    assert main([*argv, "--test-size", "30", "--dev-size", "10", "--workers", "1"]) == 0
    return out


def test_testset_is_multiway_flores_layout(offline_out):
    test = offline_out / "testset"
    manifest = json.loads((test / "manifest.json").read_text())
    assert manifest["languages"] == sorted(LOCALES.values()) and manifest["rows"] == {"devtest": 30, "dev": 10}
    for split in ("dev", "devtest"):
        english = (test / split / f"eng_Latn.{split}").read_text().splitlines()
        assert len(english) == manifest["rows"][split] and all(map(is_sentence, english))
        for locale, code in LOCALES.items():
            lines = (test / split / f"{code}.{split}").read_text().splitlines()
            assert lines == [_translate(locale, m) for m in english]  # line i is message i everywhere


def test_testset_sentences_never_reach_training(offline_out):
    test_keys = {
        overlap_key(line) for f in (offline_out / "testset").glob("*/*.dev*") for line in f.read_text().splitlines()
    }
    tok = AutoTokenizer.from_pretrained(str(offline_out / "prepared" / "tokenizer"))
    manifest = json.loads((offline_out / "prepared" / "manifest.json").read_text())
    chosen = {line for f in (offline_out / "testset").glob("*/eng_Latn.*") for line in f.read_text().splitlines()}
    near_duplicates = sum(s in chosen for s in SENTENCES[: len(LOCALES)])  # other.mo of locale i repeats sentence i
    assert len(chosen) == 40 and near_duplicates > 0
    assert manifest["counts"]["skipped"]["test_overlap"] == len(LOCALES) * 40 + near_duplicates
    n_rows = 0
    for split in ("train", "valid"):
        for row in datasets.load_from_disk(str(offline_out / "prepared" / split)):
            for side in ("src_ids", "trg_ids"):
                assert tok.unk_token_id not in row[side]
                assert overlap_key(tok.decode(row[side], skip_special_tokens=True)) not in test_keys
            n_rows += 1
    assert n_rows == manifest["counts"]["kept"] > 0


def test_rerun_reuses_both_parts(offline_out, locale_tree, capsys):
    stamp = {p: p.stat().st_mtime_ns for p in offline_out.rglob("*.arrow")} | {
        p: p.stat().st_mtime_ns for p in (offline_out / "testset").rglob("*.dev*")
    }
    argv = ["--out", str(offline_out), "--locale-root", str(locale_tree), "--vocab-size", "300", "--min-langs", "4"]
    assert main([*argv, "--test-size", "30", "--dev-size", "10", "--workers", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_real_catalogues_small_domain(tmp_path):
    root = Path("/usr/share/locale")
    if not any(root.glob("*/LC_MESSAGES/*.mo")):
        pytest.skip("no gettext catalogues on this machine")
    argv = ["--out", str(tmp_path), "--domains", "gzip,sed,grep,tar", "--vocab-size", "3000", "--min-langs", "8"]
    assert main([*argv, "--test-size", "20", "--dev-size", "5", "--workers", "2", "--tokenizer-sentences", "4000"]) == 0
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["skipped"].values()) and counts["kept"] > 1000
    assert all(pair.startswith("eng_Latn-") for pair in manifest["language_pairs"])
    assert len(json.loads((tmp_path / "testset" / "manifest.json").read_text())["languages"]) >= 8


def test_second_offline_run_into_the_same_out_is_refused(locale_tree, tmp_path, capsys):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        "import time; from pathlib import Path; from data_prep.lock import OutLock; "
        f"OutLock(Path({str(tmp_path / 'testset')!r}), 'other').acquire(); print('held', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--out", str(tmp_path), "--locale-root", str(locale_tree), "--min-langs", "4"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err and not (tmp_path / "prepared").exists()
    finally:
        holder.kill()
        holder.wait()
