"""The report writer on small fake inputs (no training): markdown content, PNGs, bad inputs named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.report import (
    ReportError,
    data_summary,
    error_table,
    load_results,
    main,
    seed_table,
    training_summary,
    write_demo_report,
)

LANGS = ("deu_Latn", "fra_Latn", "rus_Cyrl")


def fake_manifest(path: Path) -> Path:
    manifest = {
        "tokenizer": {"name": "unigram", "sha256": "0" * 64, "vocab_size": 500,
                      "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 499}},
        "counts": {"read": 130, "kept": 120, "skipped": {"empty": 4, "duplicate": 6}},
        "rows": {"train": 110, "valid": 10},
        "language_pairs": {"eng_Latn-deu_Latn": 60, "eng_Latn-fra_Latn": 60},
        "token_lengths": {"src": {"n": 120, "mean": 10.0}, "trg": {"n": 120, "mean": 12.5}},
        "shards": [], "max_tokens": 200,
    }  # fmt: skip
    path.write_text(json.dumps(manifest))
    return path


def fake_run(root: Path, steps: int = 30, slope: float = 0.05, xsim_every: int = 0) -> Path:
    root.mkdir(parents=True)
    with open(root / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            mlm, cls, koleo = 9.0 - slope * s, 0.5 / s, -1.0 + 0.01 * s
            rec = {
                "split": "train",
                "step": s,
                "loss": mlm + cls + 0.3 * koleo,
                "mlm_loss": mlm,
                "cls_loss": cls,
                "koleo_loss": koleo,
                "tokens": 1000,
                "pairs": 32,
                "elapsed_s": 2.0 * s,
                "skipped_total": 0,
            }
            f.write(json.dumps(rec) + "\n")
            if xsim_every and s % xsim_every == 0:  # eval/train_hook.py's record (fields the report reads)
                f.write(json.dumps({"split": "xsim", "step": s, "xsim_error_pct": 100.0 - slope * 10 * s}) + "\n")
        f.write(json.dumps({"split": "valid", "step": steps, "loss": 1.0}) + "\n")  # ignored by the summary
    return root


def fake_eval(root: Path, errors: dict[str, int], n: int = 50) -> Path:
    root.mkdir(parents=True)
    langs = {g: {"errors": e, "n": n, "error_pct": 100 * e / n} for g, e in errors.items()}
    total = sum(errors.values())
    res = {
        "languages": langs,
        "average": {"errors": total, "n": n * len(errors), "error_pct": 100 * total / (n * len(errors))},
    }
    (root / "results.json").write_text(json.dumps(res))
    return root


@pytest.fixture
def demo_dir(tmp_path) -> Path:
    out = tmp_path / "demo"
    fake_run(out / "train", xsim_every=10)
    fake_run(out / "reference-train", steps=25, slope=0.01, xsim_every=10)  # stopped early by its wall-clock cap
    for label, errs in (
        ("untrained", (45, 44, 48)),
        ("trained", (10, 12, 20)),
        ("reference", (49, 49, 50)),
        ("char3gram", (25, 26, 40)),
        ("untrained-dev", (46, 46, 46)),
        ("char3gram-dev", (30, 30, 30)),
    ):
        fake_eval(out / label, dict(zip(LANGS, errs)))
    return out


DEV = ("untrained", "char3gram")


def test_summaries_do_the_arithmetic(tmp_path):
    data = data_summary(json.loads(fake_manifest(tmp_path / "m.json").read_text()))
    assert (data["pairs_train"], data["languages"], data["language_pairs"]) == (110, 3, 2)
    assert data["tokens"] == 120 * 10 + 120 * 12.5 and data["skipped"] == 10
    from pipeline.training.metrics import read_metrics

    s = training_summary(read_metrics(fake_run(tmp_path / "r", steps=30)))
    assert (s["steps"], s["wall_s"], s["pairs_per_step"]) == (30, 60.0, 32)
    assert s["tokens_per_s"] == pytest.approx(30 * 1000 / 60.0)
    assert s["final_mlm_loss"] == pytest.approx(9.0 - 0.05 * 25.5)  # mean over steps 21..30


def test_demo_report_has_tables_and_pictures(demo_dir, tmp_path):
    settings = {"trained": {"lr": 1e-3, "step cap": 30}, "reference": {"lr": 1e-4, "step cap": 30}}
    path = write_demo_report(demo_dir, fake_manifest(tmp_path / "manifest.json"),
                             {"trained": demo_dir / "train", "reference": demo_dir / "reference-train"},
                             {g: demo_dir / g for g in ("untrained", "trained", "reference", "char3gram")},
                             settings, {"prep": 10.0, "train trained": 300.0},
                             {g: demo_dir / f"{g}-dev" for g in DEV})  # fmt: skip
    text = path.read_text()
    assert "Steps each run got: trained 30 of 30; reference 25 of 30, stopped by the wall-clock cap." in text
    schedule = {"max_steps": 30, "budget_s": 120.0, "s_per_step": 1.234, "fitted_at_step": 10, "timed_steps": 7}
    (demo_dir / "train" / "config.json").write_text(json.dumps({"resolved": {"schedule": schedule}}))
    fitted = write_demo_report(demo_dir, fake_manifest(tmp_path / "manifest2.json"), {"trained": demo_dir / "train"},
                             {g: demo_dir / g for g in ("untrained", "trained")}, settings).read_text()  # fmt: skip
    assert "Steps each run got: trained 30 of 30 (schedule fitted to 2.0 min at 1.23 s/step, measured over steps " \
        "4-10)." in fitted  # fmt: skip
    refit = {**schedule, "max_steps": 34, "s_per_step": 1.1, "fitted_at_step": 20, "timed_steps": 10,
             "first_fit": {"max_steps": 30, "s_per_step": 1.234, "fitted_at_step": 10, "timed_steps": 7}}  # fmt: skip
    (demo_dir / "train" / "config.json").write_text(json.dumps({"resolved": {"schedule": refit}}))
    refitted = write_demo_report(demo_dir, fake_manifest(tmp_path / "manifest3.json"), {"trained": demo_dir / "train"},
                                 {g: demo_dir / g for g in ("untrained", "trained")}, settings).read_text()  # fmt: skip
    assert "trained 30 of 34, stopped by the wall-clock cap (schedule fitted to 2.0 min at 1.10 s/step, measured " \
        "over steps 11-20; first fit 30 steps at 1.23 s/step)." in refitted  # fmt: skip
    assert "| step | trained | reference |" in text and "| 10 | 95.00 | 99.00 |" in text
    assert "| 30 | 85.00 |  |" in text  # the reference stopped at 25: no evaluation at 30
    assert "Levels on the same split: untrained 92.00, char3gram 60.00." in text
    assert "| language | untrained | trained | reference | char3gram |" in text
    assert "| **pooled** | **91.33** | **28.00** | **98.67** | **60.67** |" in text
    assert "the trained model is 32.67 points below (better than) the character 3-gram baseline (28.00% against" in text
    assert "| deu_Latn | 90.0 | 20.0 | 98.0 | 50.0 |" in text
    assert "110 train + 10 valid pairs in 2 language pairs (3 languages), 2,700 tokens" in text
    assert "| trained | 30 | 32 | 1.0 min | 500 |" in text
    assert "| **total** | 310 |" in text and "| lr | 0.001 | 0.0001 |" in text
    for png in ("losses.png", "errors.png", "xsim.png"):
        assert f"]({png})" in text
        assert (demo_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (demo_dir / png).stat().st_size > 5000


def test_cli_rebuilds_from_what_exists(demo_dir, tmp_path, capsys):
    manifest = fake_manifest(tmp_path / "manifest.json")
    (demo_dir / "reference-train" / "metrics.jsonl").unlink()  # a demo cut short: no reference run
    assert main([str(demo_dir), "--manifest", str(manifest)]) == 0
    assert f"report: {demo_dir / 'report.md'}" in capsys.readouterr().out
    text = (demo_dir / "report.md").read_text()
    assert "| run | steps |" in text and "Levels on the same split: untrained 92.00, char3gram 60.00." in text
    assert "trained by `make ablation`: `runs/ablation/report.md`" in text and "Its pooled" not in text
    ablation = tmp_path / "ablation"
    ablation.mkdir()
    (ablation / "results.json").write_text(json.dumps({"errors": {"paper's hyperparameters": [96.0, 97.0]}}))
    assert main([str(demo_dir), "--manifest", str(manifest), "--ablation", str(ablation / "report.md")]) == 0
    text = (demo_dir / "report.md").read_text()
    assert "Its pooled devtest errors here (mean over seeds): paper's hyperparameters 96.50%." in text


def test_runs_without_xsim_records_have_no_curve_section(tmp_path):
    out = tmp_path / "demo"
    fake_run(out / "train")
    fake_eval(out / "trained", dict(zip(LANGS, (10, 12, 20))))
    path = write_demo_report(out, fake_manifest(tmp_path / "m.json"), {"trained": out / "train"},
                             {"trained": out / "trained"})  # fmt: skip
    assert "Retrieval during training" not in path.read_text() and not (out / "xsim.png").exists()
    assert "Steps each run got: trained 30." in path.read_text()


def test_bad_inputs_are_named(demo_dir, tmp_path, capsys):
    (demo_dir / "trained" / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"trained/results.json: not valid JSON \(line 1"):
        load_results(demo_dir / "trained")
    assert main([str(demo_dir), "--manifest", str(tmp_path / "absent.json")]) == 2
    assert "absent.json: missing" in capsys.readouterr().err
    (demo_dir / "untrained" / "results.json").write_text("{}")
    with pytest.raises(ReportError, match="no 'languages' field"):
        load_results(demo_dir / "untrained")


def test_tables_keep_missing_languages_blank_and_spread():
    a = {"languages": {"deu_Latn": {"error_pct": 10.0}}, "average": {"error_pct": 10.0}}
    b = {"languages": {"fra_Latn": {"error_pct": 30.0}}, "average": {"error_pct": 30.0}}
    table = error_table({"a": a, "b": b})
    assert "| deu_Latn | 10.0 |  |" in table and "| fra_Latn |  | 30.0 |" in table
    spread = seed_table({"v": [10.0, 14.0], "w": [5.0]})
    assert "| v | 2 | 10.00, 14.00 | 12.00 | 2.83 | 4.00 |" in spread  # sample std of (10, 14) = 2.83
    assert "| w | 1 | 5.00 | 5.00 | 0.00 | 0.00 |" in spread


def test_a_plain_training_run_gets_its_curves_not_a_crash(tmp_path, capsys):
    run = fake_run(tmp_path / "train")
    assert main([str(run)]) == 0
    assert "python -m pipeline.plot" in capsys.readouterr().out
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_a_dir_with_nothing_to_report_is_an_error_not_an_empty_picture(tmp_path, capsys):
    assert main([str(tmp_path), "--manifest", str(fake_manifest(tmp_path / "m.json"))]) == 2
    assert "python -m pipeline.plot RUN" in capsys.readouterr().err
    assert not (tmp_path / "losses.png").exists()
