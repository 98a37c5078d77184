"""xsim during training (--xsim-every) and the `best` checkpoint: same losses with and without it, records in
metrics.jsonl, `best` kept through pruning and resume, exported with --tag best, scored as `python -m eval` scores
the export, bad test-set inputs refused before training with the file named."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval.train_hook import METRIC, XsimEvaluator, XsimHook, load_tokenizer
from pipeline.config import ConfigError
from pipeline.training import checkpoint as C
from pipeline.training.hooks import HookContext
from pipeline.training.metrics import read_metrics
from tests.pipeline.conftest import deepspeed_launcher, run_train, train_cmd
from tests.pipeline.test_checkpoint import _save

N_WORDS, N_LINES = 40, 24


def make_flores(root: Path, n: int = N_LINES, seed: int = 0) -> Path:
    """A FLORES-layout dev split in the words of the `prepared` fixture: fra_Latn (its source words), deu_Latn (the
    same sentences reversed) and eng_Latn (their translations: conftest.make_prepared's permutation of seed 0)."""
    perm = np.random.default_rng(0).permutation(N_WORDS)  # make_prepared(seed=0)'s first draw
    rng = np.random.default_rng(seed + 100)
    sents = [rng.integers(0, N_WORDS, size=int(rng.integers(3, 9))) for _ in range(n)]
    lines = {
        "fra_Latn": [" ".join(f"s{w}" for w in ws) for ws in sents],
        "deu_Latn": [" ".join(f"s{w}" for w in ws[::-1]) for ws in sents],
        "eng_Latn": [" ".join(f"t{perm[w]}" for w in ws) for ws in sents],
    }
    (root / "dev").mkdir(parents=True)
    for lang, text in lines.items():
        (root / "dev" / f"{lang}.dev").write_text("\n".join(text) + "\n")
    return root


@pytest.fixture(scope="module")
def flores(tmp_path_factory) -> Path:
    return make_flores(tmp_path_factory.mktemp("flores") / "testset")


def xsim_flags(flores: Path, every: int = 3) -> list[str]:
    return ["--xsim-every", str(every), "--xsim-data", str(flores), "--xsim-split", "dev"]


@pytest.fixture(scope="module")
def runs(prepared, flores, tmp_path_factory) -> dict[str, Path]:
    """Two 8-step 1-rank runs, the same except --xsim-every 3 (evaluations at 3, 6 and the final 8)."""
    root = tmp_path_factory.mktemp("xsim_runs")
    common = ["--max-steps", "8", "--save-every", "2", "--keep-checkpoints", "1", "--valid-every", "-1"]
    run_train(train_cmd(prepared, root / "plain", *common))
    run_train(train_cmd(prepared, root / "xsim", *common, *xsim_flags(flores)))
    return {"plain": root / "plain", "xsim": root / "xsim"}


def test_losses_are_identical_with_and_without_xsim(runs):
    keys = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "grad_norm", "lr", "tokens")
    plain, xsim = read_metrics(runs["plain"]), read_metrics(runs["xsim"])
    assert [r["step"] for r in xsim] == list(range(1, 9))
    assert [{k: r[k] for k in keys} for r in xsim] == [{k: r[k] for k in keys} for r in plain]


def test_records_and_best_checkpoint(runs):
    records = read_metrics(runs["xsim"], split="xsim")
    assert [r["step"] for r in records] == [3, 6, 8]
    for r in records:
        assert r["xsim_split"] == "dev" and r["languages"] == 2 and r["n"] == 2 * N_LINES and r["xsim_s"] > 0
        per_lang = [r[f"{METRIC}/{lang}"] for lang in ("deu_Latn", "fra_Latn")]
        assert r[METRIC] == pytest.approx(sum(per_lang) / 2)  # pooled: equal n per language
    scores = [r[METRIC] for r in records]
    best_i = scores.index(min(scores))  # strict improvements: the first step reaching the minimum
    best = json.loads((runs["xsim"] / "checkpoints" / C.BEST_JSON).read_text())
    assert (best["step"], best["score"], best["metric"]) == (records[best_i]["step"], min(scores), METRIC)
    mgr = C.CheckpointManager(runs["xsim"])
    assert mgr.best_tag() == best["tag"] == C.tag_for(best["step"]) and mgr.verify(best["tag"]) is None
    assert [r["is_best"] for r in records] == [s < min(scores[:i], default=1e9) for i, s in enumerate(scores)]
    # --keep-checkpoints 1: only the latest and the best survive pruning
    assert set(mgr.tags()) == {"step_00000008", best["tag"]}


def test_export_best_scores_as_python_m_eval(runs, flores, tmp_path):
    """--tag best exports the best step; `python -m eval` on that export gives the in-training record's errors."""
    from eval.cli import main as eval_main
    from pipeline.export import main as export_main

    best = json.loads((runs["xsim"] / "checkpoints" / C.BEST_JSON).read_text())
    assert export_main([str(runs["xsim"]), str(tmp_path / "hf"), "--tag", "best"]) == 0
    assert json.loads((tmp_path / "hf" / "mexma_export.json").read_text())["checkpoint"] == best["tag"]
    argv = ["--model", str(tmp_path / "hf"), "--flores", str(flores), "--split", "dev", "--out", str(tmp_path / "ev")]
    assert eval_main([*argv, "--max-length", "200", "--no-progress", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    record = next(r for r in read_metrics(runs["xsim"], split="xsim") if r["step"] == best["step"])
    assert result["average"]["error_pct"] == pytest.approx(record[METRIC])
    for lang, entry in result["languages"].items():
        assert entry["error_pct"] == pytest.approx(record[f"{METRIC}/{lang}"])


def test_two_ranks_share_the_encoding_and_agree(prepared, flores, tmp_path):
    """2 DeepSpeed ranks (gloo): each encodes a share, rank 0 scores and broadcasts, both save `best` together."""
    out = tmp_path / "two"
    run_train(
        train_cmd(prepared, out, "--max-steps", "4", "--save-every", "0", "--valid-every", "-1",
                  *xsim_flags(flores, every=2), launcher=deepspeed_launcher(2)),
        timeout=600,
    )  # fmt: skip
    records = read_metrics(out, split="xsim")
    assert [r["step"] for r in records] == [2, 4] and records[0]["is_best"]
    best = C.CheckpointManager(out).best()
    assert best["step"] in (2, 4) and (out / "checkpoints" / best["tag"] / "client_rank00001.pt").is_file()


def test_relaunch_keeps_the_best_so_far(prepared, flores, tmp_path):
    """A run relaunched for more steps ranks against the first launch's best.json: `best` moves only on a strict
    improvement over every evaluation of both launches."""
    out, flags = tmp_path / "run", ["--save-every", "0", "--valid-every", "-1", *xsim_flags(flores, every=2)]
    run_train(train_cmd(prepared, out, "--max-steps", "4", *flags))
    first = C.CheckpointManager(out).best()
    run_train(train_cmd(prepared, out, "--max-steps", "8", *flags))
    records = read_metrics(out, split="xsim")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    scores = [r[METRIC] for r in records]
    best = C.CheckpointManager(out).best()
    assert best["score"] == min(scores) and best["step"] == records[scores.index(min(scores))]["step"]
    assert best["score"] <= first["score"]
    for r in records[2:]:  # the relaunch's evaluations know the first launch's best
        assert r[f"best_{METRIC}"] == min(scores[: records.index(r) + 1])


# -- bad inputs: refused before training, the file named, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("damage", "flags", "message"),
    [
        (lambda root: None, {"xsim_data": "absent"}, "--xsim-data .*absent: not a directory"),
        (lambda root: None, {"xsim_split": "devtest"}, r"--xsim-split devtest: no directory .*testset/devtest"),
        (lambda root: None, {"xsim_langs": "fra_Latn,ita_Latn"}, "--xsim-langs: missing ita_Latn"),
        (lambda root: None, {"xsim_target": "spa_Latn"}, "--xsim-target spa_Latn: no such language file"),
        (
            lambda root: (root / "dev" / "deu_Latn.dev").write_text("s1 s2\ns3\n"),
            {},
            r"eng_Latn\.dev has 24 lines but .*deu_Latn\.dev has 2",
        ),
        (lambda root: (root / "dev" / "eng_Latn.dev").unlink(), {}, "--xsim-target eng_Latn: no such language file"),
        (lambda root: (root / "dev" / "fra_Latn.dev").write_text("s1\n\ns2\n"), {}, r"fra_Latn\.dev:2: empty line"),
    ],
)
def test_bad_test_set_is_a_config_error_naming_the_file(prepared, tmp_path, damage, flags, message):
    root = make_flores(tmp_path / "testset")
    damage(root)
    run = dict(xsim_data=str(root), xsim_split="dev", xsim_langs="all", xsim_target="eng_Latn")
    run.update({k: str(tmp_path / v) if k == "xsim_data" else v for k, v in flags.items()})
    with pytest.raises(ConfigError, match=message):
        XsimEvaluator(SimpleNamespace(**run), load_tokenizer(prepared), 200, 1)


def test_train_refuses_a_bad_test_set_before_training(prepared, flores, tmp_path):
    out = tmp_path / "run"
    proc = run_train(
        train_cmd(prepared, out, "--max-steps", "2", *xsim_flags(flores), "--xsim-langs", "fra_Latn,xxx_Latn"),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--xsim-langs: missing xxx_Latn" in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


# -- the evaluator on a live model, in process -------------------------------------------------------------------------


def tiny_model(prepared):
    from pipeline.config import parse_args
    from pipeline.model.mexma import build_model
    from tests.pipeline.conftest import TINY_MODEL_FLAGS

    cfg = parse_args(["--data", str(prepared), "--output-dir", "unused", *TINY_MODEL_FLAGS])
    vocab = json.loads((prepared / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    return build_model(cfg.model, vocab, 1)


def evaluator(prepared, flores) -> XsimEvaluator:
    run = SimpleNamespace(xsim_data=str(flores), xsim_split="dev", xsim_langs="all", xsim_target="eng_Latn")
    return XsimEvaluator(run, load_tokenizer(prepared), 200, 1)


def test_evaluation_restores_rng_and_train_mode(prepared, flores):
    model = tiny_model(prepared).train()
    ev = evaluator(prepared, flores)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    emb = ev.encode_share(model, torch.device("cpu"))
    assert model.training and all(m.training for m in model.modules())
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert set(emb) == {"fra_Latn", "deu_Latn", "eng_Latn"} and emb["fra_Latn"].shape == (N_LINES, 64)
    again = ev.encode_share(model, torch.device("cpu"))  # eval mode: dropout off, so the same embeddings
    assert np.array_equal(again["eng_Latn"], emb["eng_Latn"])


def test_xsimpp_is_recorded_when_the_augmented_files_exist(prepared, tmp_path):
    """LASER's augmented English (hard negatives) beside the split: the record gains xsim++, pooled and per language,
    with the same scoring as `python -m eval` (an augmented line is a target candidate too)."""
    root = make_flores(tmp_path / "testset")
    eng = (root / "dev" / "eng_Latn.dev").read_text().splitlines()
    aug = [" ".join(reversed(line.split())) + " t0" for line in eng[:6]]  # "word order" variants of six sentences
    (root / "dev_augmented").mkdir()
    (root / "dev_augmented" / "eng_Latn_augmented.dev").write_text("\n".join(aug) + "\n")
    errtypes = {a: {"src": e, "errtype": "word order"} for a, e in zip(aug, eng)}
    (root / "dev_augmented" / "eng_Latn_errtype.dev.json").write_text(json.dumps(errtypes))
    record = evaluator(prepared, root).run(tiny_model(prepared), torch.device("cpu"))
    assert record["split"] == "xsim" and 0.0 <= record["xsimpp_error_pct"] <= 100.0 and METRIC in record
    assert {k for k in record if k.startswith("xsimpp_error_pct/")} == {
        "xsimpp_error_pct/deu_Latn",
        "xsimpp_error_pct/fra_Latn",
    }


def test_resumed_best_so_far_is_kept(prepared, flores, tmp_path):
    """The hook ranks against checkpoints/best.json, so a relaunch (or any later evaluation) keeps a better best."""
    mgr = C.CheckpointManager(tmp_path, keep=1)
    ev = evaluator(prepared, flores)
    mgr.mark_best(_save(mgr, 2), 2, -1.0, METRIC, fingerprint=ev.fingerprint)  # a best no model can beat: -1% error
    written, saved = [], []
    ctx = HookContext(
        step=4, model=tiny_model(prepared), device=torch.device("cpu"), write=written.append, best=mgr.best,
        save_best=lambda score, metric, fingerprint: saved.append(score), elapsed=lambda: 1.5,
    )  # fmt: skip
    record = XsimHook(ev, every=2).evaluate(ctx)
    assert not record["is_best"] and (record["best_step"], record[f"best_{METRIC}"]) == (2, -1.0)
    assert mgr.best()["step"] == 2 and saved == [] and mgr.tags() == ["step_00000002"]  # no forced save
    assert written == [record] and (record["step"], record["elapsed_s"]) == (4, 1.5)


# -- the checkpoint manager's side ----------------------------------------------------------------------------------


def test_prune_never_removes_best(tmp_path):
    mgr = C.CheckpointManager(tmp_path, keep=2)
    _save(mgr, 1)
    mgr.mark_best("step_00000001", 1, 50.0, METRIC)
    for step in range(2, 6):
        _save(mgr, step)
    assert mgr.tags() == ["step_00000005", "step_00000004", "step_00000001"]
    mgr.mark_best("step_00000005", 5, 40.0, METRIC)  # a new best: the old one is prunable again
    assert mgr.tags() == ["step_00000005", "step_00000004"]
    assert (mgr.root / C.BEST).read_text() == "step_00000005" and mgr.best()["score"] == 40.0


def test_mark_best_refuses_an_incomplete_checkpoint_and_reads_damage_as_none(tmp_path, caplog):
    mgr = C.CheckpointManager(tmp_path)
    (mgr.root / "step_00000003").mkdir()
    with pytest.raises(C.CheckpointError, match="step_00000003: not a complete checkpoint"):
        mgr.mark_best("step_00000003", 3, 1.0, METRIC)
    assert mgr.best() is None
    (mgr.root / C.BEST_JSON).write_text("{torn")
    assert mgr.best() is None and "best.json unreadable" in caplog.text
