"""Mining F1 during training (--mine-every): same losses with and without it, records beside xsim's, 2 ranks, `best`
chosen by --best-metric in the right direction with the mining set's fingerprint, relaunch rules, bad flags refused
(exit 2)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval.mine_hook import METRIC, MineEvaluator, MineHook
from eval.train_hook import METRIC as XSIM_METRIC
from eval.train_hook import chooses_best, load_tokenizer
from pipeline.config import ConfigError, parse_args
from pipeline.training import checkpoint as C
from pipeline.training.hooks import Hook, HookContext, budget
from pipeline.training.metrics import read_metrics
from pipeline.training.runrecord import compare
from tests.pipeline.conftest import deepspeed_launcher, run_train, train_cmd
from tests.pipeline.test_checkpoint import _save
from tests.pipeline.test_xsim_train import N_WORDS, make_flores, tiny_model, xsim_flags

PAIR, SPLIT = "fr-en", "sample"


def make_mining_set(root: Path, n: int = 24, planted: int = 16, seed: int = 0) -> Path:
    """A BUCC-layout split in the `prepared` fixture's words: `planted` French lines translate English lines (the
    gold, ids shuffled), the other French lines translate sentences absent from the English side."""
    perm = np.random.default_rng(0).permutation(N_WORDS)  # make_prepared(seed=0)'s first draw, as make_flores
    rng = np.random.default_rng(seed + 200)
    sents = [rng.integers(0, N_WORDS, size=int(rng.integers(4, 9))) for _ in range(2 * n - planted)]
    english = [" ".join(f"t{perm[w]}" for w in ws) for ws in sents[:n]]
    french = [(" ".join(f"s{w}" for w in ws), j if j < planted else None) for j, ws in enumerate(sents[:planted])]
    french += [(" ".join(f"s{w}" for w in ws), None) for ws in sents[n:]]
    random.Random(seed).shuffle(french)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{PAIR}.{SPLIT}.fr").write_text("".join(f"fr-{i}\t{s}\n" for i, (s, _) in enumerate(french)))
    (root / f"{PAIR}.{SPLIT}.en").write_text("".join(f"en-{j}\t{s}\n" for j, s in enumerate(english)))
    gold = "".join(f"fr-{i}\ten-{j}\n" for i, (_, j) in enumerate(french) if j is not None)
    (root / f"{PAIR}.{SPLIT}.gold").write_text(gold)
    return root


def mine_flags(root: Path, every: int = 2) -> list[str]:
    return ["--mine-every", str(every), "--mine-data", str(root), "--mine-pair", PAIR, "--mine-split", SPLIT]


@pytest.fixture(scope="module")
def mining_set(tmp_path_factory) -> Path:
    return make_mining_set(tmp_path_factory.mktemp("bucc") / "mine")


@pytest.fixture(scope="module")
def runs(prepared, mining_set, tmp_path_factory) -> dict[str, Path]:
    """Two 4-step 1-rank runs, the same except xsim and mining every 2 steps, mining choosing `best`."""
    root = tmp_path_factory.mktemp("mine_runs")
    flores = make_flores(root / "testset")
    common = ["--max-steps", "4", "--save-every", "0", "--valid-every", "-1"]
    run_train(train_cmd(prepared, root / "plain", *common))
    hooks = [*xsim_flags(flores, every=2), *mine_flags(mining_set), "--best-metric", "mine"]
    run_train(train_cmd(prepared, root / "both", *common, *hooks))
    return {"plain": root / "plain", "both": root / "both"}


def test_losses_are_identical_with_and_without_mining(runs):
    keys = ("loss", "mlm_loss", "cls_loss", "koleo_loss", "grad_norm", "lr", "tokens")
    plain, both = read_metrics(runs["plain"]), read_metrics(runs["both"])
    assert [{k: r[k] for k in keys} for r in both] == [{k: r[k] for k in keys} for r in plain]


def test_both_hooks_record_and_mining_keeps_best(runs):
    mine, xsim = read_metrics(runs["both"], split="mine"), read_metrics(runs["both"], split="xsim")
    assert [r["step"] for r in mine] == [2, 4] and [r["step"] for r in xsim] == [2, 4]
    for r in mine:
        assert r["mine_split"] == SPLIT and r["pairs"] == 1 and r["gold"] == 16 and 0 <= r[METRIC] <= 100
        assert r[f"{METRIC}/{PAIR}"] == r[METRIC] and r["mine_s"] > 0
    assert all("is_best" not in r for r in xsim)  # xsim records only: --best-metric mine
    scores = [r[METRIC] for r in mine]
    assert [r["is_best"] for r in mine] == [True, scores[1] > scores[0]]  # higher F1 is better
    best = json.loads((runs["both"] / "checkpoints" / C.BEST_JSON).read_text())
    record = json.loads((runs["both"] / "config.json").read_text())
    assert (best["metric"], best["score"]) == (METRIC, max(scores))
    assert best["step"] == mine[scores.index(max(scores))]["step"]
    run_record = json.loads((runs["both"] / "checkpoints" / "step_00000004" / "run_record.json").read_text())
    assert best["fingerprint"] == run_record["mine_sha256"] and len(run_record["xsim_sha256"]) == 64
    assert record["run"]["best_metric"] == "mine"
    from pipeline.training.console import summary_lines

    best_line = f"best in-training mining F1: {max(scores):.2f}% at step {best['step']}"
    assert best_line in summary_lines(runs["both"])


def test_two_ranks_share_the_mining_and_save_best_together(prepared, mining_set, tmp_path):
    """2 DeepSpeed ranks (gloo) with both hooks: each encodes a share, rank 0 mines, both save `best`."""
    out, flores = tmp_path / "two", make_flores(tmp_path / "testset")
    flags = ["--max-steps", "2", "--save-every", "0", "--valid-every", "-1", *mine_flags(mining_set)]
    run_train(train_cmd(prepared, out, *flags, *xsim_flags(flores, every=2), "--best-metric", "mine",
                        launcher=deepspeed_launcher(2)), timeout=600)  # fmt: skip
    assert [(r["step"], r["is_best"]) for r in read_metrics(out, split="mine")] == [(2, True)]
    assert [r["step"] for r in read_metrics(out, split="xsim")] == [2]
    best = C.CheckpointManager(out).best()
    assert best["metric"] == METRIC and (out / "checkpoints" / best["tag"] / "client_rank00001.pt").is_file()


def test_another_mining_set_is_a_config_change(runs):
    """The run record holds the mining set's fingerprint in the relaunch rules' "change" class."""
    old = json.loads((runs["both"] / "checkpoints" / "step_00000004" / "run_record.json").read_text())
    changes = compare(old, {**old, "mine_sha256": "0" * 64})
    assert [c for c in changes.change if c.startswith("--mine-data (the mining set): ")] and not changes.never


def test_choice_of_best_metric():
    def run(best="auto", xsim=0, mine=0):
        return SimpleNamespace(best_metric=best, xsim_every=xsim, mine_every=mine)

    assert chooses_best(run(xsim=2, mine=2), "xsim") and not chooses_best(run(xsim=2, mine=2), "mine")
    assert chooses_best(run(mine=2), "mine")
    assert chooses_best(run("mine", xsim=2, mine=2), "mine") and not chooses_best(run("mine", 2, 2), "xsim")


def test_budget_sums_the_hooks_at_the_shortest_cadence():
    a, b = Hook(), Hook()
    a.every, a.tokens, b.every, b.tokens = 10, 1000, 40, 400
    assert budget([a, b]) == (10, 1100) and budget([Hook()]) == (0, 0) and budget([b]) == (40, 400)


# -- the evaluator and hook in process --------------------------------------------------------------------------------


def evaluator(prepared, root, rank=0, world=1, pair=PAIR) -> MineEvaluator:
    run = SimpleNamespace(mine_data=str(root), mine_pair=pair, mine_split=SPLIT)
    return MineEvaluator(run, load_tokenizer(prepared), 200, 1, rank, world)


def test_mining_restores_rng_and_train_mode_and_shares_split_the_sides(prepared, mining_set):
    model = tiny_model(prepared).train()
    ev = evaluator(prepared, mining_set)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    record = ev.run(model, torch.device("cpu"))
    assert model.training and all(m.training for m in model.modules())
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert record["split"] == "mine" and record["gold"] == 16 and 0 <= record["mine_recall_pct"] <= 100
    halves = [evaluator(prepared, mining_set, rank, 2) for rank in (0, 1)]
    assert sorted(halves[0].share + halves[1].share) == sorted(ev.share) == [f"{PAIR}.src", f"{PAIR}.trg"]
    assert halves[0].tokens + halves[1].tokens == ev.tokens and ev.fingerprint == halves[1].fingerprint


def context(prepared, mgr, written, saved) -> HookContext:
    return HookContext(
        step=4, model=tiny_model(prepared), device=torch.device("cpu"), write=written.append, best=mgr.best,
        save_best=lambda score, metric, fingerprint: saved.append((score, metric, fingerprint)), elapsed=lambda: 1.0,
    )  # fmt: skip


def test_higher_f1_is_better_and_other_lineages_restart(prepared, mining_set, tmp_path):
    mgr = C.CheckpointManager(tmp_path, keep=1)
    ev = evaluator(prepared, mining_set)
    written, saved = [], []
    mgr.mark_best(_save(mgr, 2), 2, 101.0, METRIC, fingerprint=ev.fingerprint)  # an F1 no model reaches
    record = MineHook(ev, every=2).evaluate(context(prepared, mgr, written, saved))
    assert not record["is_best"] and (record["best_step"], record[f"best_{METRIC}"]) == (2, 101.0) and saved == []
    mgr.mark_best("step_00000002", 2, -1.0, METRIC, fingerprint=ev.fingerprint)  # any F1 beats it
    assert MineHook(ev, every=2).evaluate(context(prepared, mgr, written, saved))["is_best"]
    mgr.mark_best("step_00000002", 2, 0.0, XSIM_METRIC, fingerprint=ev.fingerprint)  # an xsim best: not comparable
    assert MineHook(ev, every=2).evaluate(context(prepared, mgr, written, saved))["is_best"]
    assert [s[1:] for s in saved] == [(METRIC, ev.fingerprint)] * 2 and len(written) == 3


# -- bad flags and inputs: ConfigError naming the flag, exit 2 --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mine-every", "2"], "--mine-data: required with --mine-every"),
        (["--mine-every", "2", "--mine-data", "x"], "--mine-pair: required with --mine-every"),
        (["--mine-every", "-1"], "--mine-every: must be >= 0"),
        (["--best-metric", "mine"], "--best-metric: mine needs --mine-every > 0"),
        (["--best-metric", "xsim"], "--best-metric: xsim needs --xsim-every > 0"),
    ],
)
def test_bad_mining_flags_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--data", "d", "--output-dir", "o", *argv])


@pytest.mark.parametrize(
    ("damage", "pair", "message"),
    [
        (lambda root: shutil.rmtree(root), PAIR, "--mine-data .*mine: not a directory"),
        (lambda root: None, "fr", "--mine-pair fr: expected SRC-TRG"),
        (lambda root: None, "de-en", r"--mine-data .*: no de-en\.sample\.de"),
        (lambda root: (root / f"{PAIR}.{SPLIT}.gold").unlink(), PAIR, r"no fr-en\.sample\.gold"),
        (lambda root: (root / f"{PAIR}.{SPLIT}.en").write_text("en-1 no tab\n"), PAIR, r"\.en:1: expected 2"),
        (lambda root: (root / f"{PAIR}.{SPLIT}.en").write_text("e1\ta\ne2\tb\n"), PAIR, "2 distinct sentences"),
    ],
)
def test_bad_mining_set_is_a_config_error(prepared, tmp_path, damage, pair, message):
    root = make_mining_set(tmp_path / "mine")
    damage(root)
    with pytest.raises(ConfigError, match=message):
        evaluator(prepared, root, pair=pair)


def test_train_refuses_a_bad_mining_set_before_training(prepared, mining_set, tmp_path):
    out = tmp_path / "run"
    flags = [*mine_flags(mining_set), "--mine-split", "test"]
    proc = run_train(train_cmd(prepared, out, "--max-steps", "2", *flags), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--mine-data" in proc.stderr and "fr-en.test.fr" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
