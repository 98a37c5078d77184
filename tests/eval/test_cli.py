"""``python -m eval`` end to end: result files, xsim++, N-way, checkpoints through export, bad input."""

import json
import shutil
import sys
import types

import pytest

from eval.cli import main
from eval.encode import HFEncoder
from eval.xsim import count_errors, nearest
from tests.eval.conftest import write_augmented


def _run(tmp_path, *args):
    out = tmp_path / "out"
    code = main([*args, "--out", str(out), "--no-progress"])
    return code, out


def test_hf_model_end_to_end_matches_direct_scoring(tiny_model, flores, tmp_path):
    write_augmented(flores)
    code, out = _run(tmp_path, "--model", str(tiny_model), "--flores", str(flores), "--langs", "all")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["languages"]) == ["deu_Latn", "fra_Latn", "spa_Latn"]
    enc = HFEncoder(str(tiny_model))
    texts = {g: (flores / "devtest" / f"{g}.devtest").read_text().splitlines() for g in ("eng_Latn", "fra_Latn")}
    best = nearest(enc.encode(texts["fra_Latn"]), enc.encode(texts["eng_Latn"]), "ratio", 4)
    assert results["languages"]["fra_Latn"]["errors"] == count_errors(best, texts["eng_Latn"])
    total = sum(e["errors"] for e in results["languages"].values())
    assert results["average"] == {"errors": total, "n": 72, "error_pct": 100 * total / 72}
    pp = results["xsimpp"]
    assert sum(pp["errtype_totals"].values()) == pp["average"]["errors"] >= results["average"]["errors"] - 72
    assert "**average**" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0].startswith("language,errors,n,error_pct,xsimpp")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_char3gram_nway(flores, tmp_path):
    code, out = _run(tmp_path, "--model", "char3gram", "--flores", str(flores), "--nway", "--margin", "absolute")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["nway"]["pairs"]) == 4 * 3
    assert results["languages"]["fra_Latn"]["n"] == 3 * 24
    assert results["average"]["n"] == 12 * 24


@pytest.mark.parametrize("trust", [False, True])
def test_training_dir_is_exported_under_out(tiny_model, flores, tmp_path, monkeypatch, trust):
    """The export goes to OUT/exported_model (shared with other nodes, kept), not a node-local temp dir;
    --trust-checkpoint reaches the export."""
    calls = []

    def export_checkpoint(src, out_dir, trust=False):
        calls.append((src, out_dir, trust))
        shutil.copytree(tiny_model, out_dir)
        return out_dir

    monkeypatch.setitem(sys.modules, "pipeline.export", types.SimpleNamespace(export_checkpoint=export_checkpoint))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text('{"data": {"max_length": 64}}')  # the training config, not an HF one
    flags = ["--trust-checkpoint"] if trust else []
    code, out = _run(tmp_path, "--model", str(run_dir), "--flores", str(flores), "--langs", "fra_Latn", *flags)
    assert code == 0 and calls == [(str(run_dir), str(out / "exported_model"), trust)]
    assert (out / "exported_model" / "config.json").is_file()
    assert json.loads((out / "results.json").read_text())["model"] == str(run_dir)


def test_model_dir_without_tokenizer_is_refused(tiny_model, flores, tmp_path, capsys):
    """transformers would fall back to a tokenizer mapping every word to <unk> and score anyway."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, bare / name)
    code, out = _run(tmp_path, "--model", str(bare), "--flores", str(flores), "--langs", "fra_Latn")
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"--model {bare}: no tokenizer there (none of tokenizer.json" in err and "--tokenizer" in err
    code, out = _run(tmp_path, "--model", str(bare), "--tokenizer", str(tiny_model), "--flores", str(flores))
    assert code == 0
    _, ref = _run(tmp_path / "ref", "--model", str(tiny_model), "--flores", str(flores))
    direct = json.loads((ref / "results.json").read_text())
    assert json.loads((out / "results.json").read_text())["languages"] == direct["languages"]


def _fail_export(src, out_dir, trust=False):
    raise FileNotFoundError(f"{src}: no checkpoints/latest")


@pytest.mark.parametrize(
    ("setup", "flag_args", "message"),
    [
        (None, ["--langs", "fra_Latn,xho_Latn"], "--langs: missing xho_Latn (available: deu_Latn, eng_Latn"),
        ("short", [], "fra_Latn.devtest has 23 lines but"),
        ("blank", [], "deu_Latn.devtest:3: empty line"),
        (None, ["--split", "dev"], "--split dev: no directory"),
        ("model", [], "exporting it as a training checkpoint failed: FileNotFoundError"),
        (None, ["--k", "30"], "--k 30: the margin needs k <= 24"),
    ],
)
def test_bad_input_is_a_clear_error(setup, flag_args, message, flores, tmp_path, monkeypatch, capsys):
    model = "char3gram"
    if setup == "short":
        path = flores / "devtest" / "fra_Latn.devtest"
        path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    elif setup == "blank":
        path = flores / "devtest" / "deu_Latn.devtest"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:2] + [" "] + lines[3:]) + "\n")
    elif setup == "model":
        model = str(tmp_path / "not_a_model")
        (tmp_path / "not_a_model").mkdir()
        monkeypatch.setitem(sys.modules, "pipeline.export", types.SimpleNamespace(export_checkpoint=_fail_export))
    code, out = _run(tmp_path, "--model", model, "--flores", str(flores), *flag_args)
    assert code == 2 and not out.exists()
    assert message in capsys.readouterr().err


def test_flag_errors_name_the_flag(flores, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "char3gram", "--flores", str(flores), "--out", str(tmp_path), "--k", "0"])
    assert "--k must be >= 1" in capsys.readouterr().err


def test_index_comparison_counts_duplicates(flores, tmp_path):
    # Line 1 := line 0 in English and French. Both French copies tie on both English copies; the 1-NN keeps the
    # lowest id (faiss's rule), so French row 1 retrieves English row 0: an error by index, not by text.
    for lang in ("eng_Latn", "fra_Latn"):
        path = flores / "devtest" / f"{lang}.devtest"
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], lines[0], *lines[2:]]) + "\n")
    args = ["--model", "char3gram", "--flores", str(flores), "--langs", "fra_Latn", "--margin", "absolute"]
    by = {}
    for name, extra in (("text", []), ("index", ["--index-comparison"])):
        _, out = _run(tmp_path / name, *args, *extra)
        by[name] = json.loads((out / "results.json").read_text())["languages"]["fra_Latn"]["errors"]
    assert by["index"] == by["text"] + 1
