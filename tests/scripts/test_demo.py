"""The demo's pieces that need no full training: the untrained model is training's initialisation, the recipe files
reach train.py through --recipe, the ablation's variants, the sweep's --set parsing, one training with the whole
budget, and bad command lines are refused with the flag named."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import XLMRobertaModel

from pipeline.config import parse_args
from scripts import ablation, demo
from scripts.common import build_untrained, recipe_flags, recipe_settings, train_cmd
from scripts.sweep import parse_sets
from tests.pipeline.conftest import TINY_MODEL_FLAGS, run_train
from tests.pipeline.conftest import train_cmd as tiny_train_cmd


def test_untrained_model_is_the_training_initialisation(prepared, tmp_path):
    """One optimizer step at lr 0 (warmup from factor 0) leaves training's init weights: export == build_untrained."""
    from pipeline.export import export_checkpoint

    recipe = tmp_path / "lr0.json"  # the demo's recipe with lr 0 at the first step: round(0.9 x 1) = 1 warmup step
    flags = {**recipe_settings(demo.RECIPE), "warmup-start-factor": 0.0, "warmup-fraction": 0.9}
    recipe.write_text(json.dumps({"description": "demo recipe at lr 0", "flags": flags}))
    run = tmp_path / "lr0"
    argv = ["--max-steps", "1", "--seed", "3", "--valid-every", "-1", "--recipe", str(recipe), *TINY_MODEL_FLAGS]
    run_train(tiny_train_cmd(prepared, run, *argv))
    load = lambda path: XLMRobertaModel.from_pretrained(path, add_pooling_layer=False)  # noqa: E731
    trained = load(export_checkpoint(str(run), str(tmp_path / "lr0-hf")))
    built = load(build_untrained(str(prepared), tmp_path / "untrained", str(recipe), seed=3, extra=TINY_MODEL_FLAGS))
    want, got = trained.state_dict(), built.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name
    other = load(build_untrained(str(prepared), tmp_path / "seed4", str(recipe), seed=4, extra=TINY_MODEL_FLAGS))
    assert not torch.equal(other.embeddings.word_embeddings.weight, built.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("recipe", ["tiny-cpu", "tiny-paper"])
def test_recipes_reach_train_py_with_the_scripts_overrides(tmp_path, recipe):
    flags = recipe_settings(recipe)
    cmd = train_cmd("data/prepared", tmp_path / "r", recipe, {"koleo-weight": 0.0}, steps=400, minutes=5.0, seed=1)
    assert cmd[1:3] == ["--num_gpus", "2"] and "pipeline/train.py" in cmd
    cfg = parse_args(cmd[cmd.index("pipeline/train.py") + 1 :])
    assert (cfg.run.recipe, cfg.optim.lr, cfg.model.koleo_weight) == (recipe, flags["lr"], 0.0)
    assert (cfg.run.max_steps, cfg.run.max_minutes, cfg.run.seed) == (400, 5.0, 1)
    assert (cfg.data.batch_pairs, cfg.optim.grad_accum) == (flags["batch-pairs"], flags["grad-accum"])
    assert (cfg.model.koleo_global, cfg.model.head_layers) == (flags["koleo-global"], flags["head-layers"])
    cmd = train_cmd("d", tmp_path, recipe, steps=1, minutes=1, pairs_per_step=64)  # --pairs: 2 ranks x 32
    cfg = parse_args(cmd[cmd.index("pipeline/train.py") + 1 :])
    assert (cfg.data.batch_pairs, cfg.optim.grad_accum) == (32, 1)
    with pytest.raises(ValueError, match="pairs per step 33 is not divisible by 2"):
        train_cmd("d", tmp_path, recipe, steps=1, minutes=1, pairs_per_step=33)


def test_the_ablation_varies_the_demo_recipe_and_trains_the_papers_hyperparameters():
    assert {name: recipe for name, (recipe, _) in ablation.VARIANTS.items()} == {
        "alignment only": "tiny-cpu",
        "+ cross-unmasking": "tiny-cpu",
        "+ KoLeo (demo recipe)": "tiny-cpu",
        "paper's hyperparameters": "tiny-paper",
    }
    assert ablation.VARIANTS["alignment only"][1] == {"mlm-weight": 0.0, "koleo-weight": 0.0}
    paper = recipe_settings("tiny-paper")
    assert (paper["lr"], paper["warmup-fraction"], paper["koleo-weight"], paper["hidden-dropout"]) == (
        1e-4,
        0.3,
        0.01,
        0.1,
    )


def test_sweep_sets_override_the_recipe():
    sets = parse_sets(["lr=5e-4", "koleo-global=true", "src-mask-prob=0.2", "head-layers=2"])
    assert sets == {"lr": 5e-4, "koleo-global": True, "src-mask-prob": 0.2, "head-layers": 2}
    assert recipe_flags({"koleo-global": False, "lr": 0.001}) == ["--no-koleo-global", "--lr", "0.001"]
    with pytest.raises(SystemExit, match="expected FLAG=VALUE"):
        parse_sets(["--lr=1"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--pairs", "31"], "--pairs must be even"),
    (["--minutes", "-1"], "--minutes must be > 0"),
])  # fmt: skip
def test_demo_refuses_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_demo_trains_one_model_with_the_whole_budget_scoring_xsim_on_dev(tmp_path, monkeypatch):
    """One training (the demo recipe) gets every minute the target leaves and --xsim-every on data/testset's dev
    split; the baselines are also scored on dev (the curves' levels) while the final table stays on devtest."""
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "manifest.json").write_text("{}")
    cmds = []
    monkeypatch.setattr(demo, "run_stage", lambda name, cmd, log, **kw: cmds.append(cmd) or 0.0)
    monkeypatch.setattr(demo, "build_untrained", lambda *a, **kw: None)
    argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--stages", "untrained,char3gram,trained"]
    assert demo.main(argv) == 0
    trainings = [c for c in cmds if "pipeline/train.py" in c]
    assert len(trainings) == 1
    cfg = parse_args(trainings[0][trainings[0].index("pipeline/train.py") + 1 :])
    assert cfg.run.recipe == demo.RECIPE and cfg.optim.lr == recipe_settings(demo.RECIPE)["lr"]
    assert (cfg.run.xsim_every, cfg.run.xsim_split) == (demo.XSIM_EVERY, "dev") == (50, "dev")
    assert cfg.run.xsim_data == str(tmp_path / "data" / "testset")
    evals = {c[c.index("--out") + 1]: c[c.index("--split") + 1] for c in cmds if c[1:3] == ["-m", "eval"]}
    out = tmp_path / "out"
    # The budget: what --total-minutes leaves (nothing ran for real here) after a start-up, an export and an evaluation
    budget = json.loads((out / "budget.json").read_text())
    assert cfg.run.fit_to_minutes and cfg.run.max_minutes == budget["minutes"] and cfg.run.max_steps == demo.STEPS
    overhead = demo.START_S + demo.EXPORT_S + budget["eval_s"] + demo.REPORT_S
    assert budget["minutes"] == pytest.approx((demo.TOTAL_MINUTES * 60 - overhead) / 60, abs=0.02)
    assert evals == {
        str(out / "untrained"): "devtest",
        str(out / "untrained-dev"): "dev",
        str(out / "char3gram"): "devtest",
        str(out / "char3gram-dev"): "dev",
        str(out / "trained"): "devtest",
    }


def test_demo_budget_is_kept_for_a_rerun_and_has_a_floor(tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "manifest.json").write_text("{}")
    cmds = []
    monkeypatch.setattr(demo, "run_stage", lambda name, cmd, log, **kw: cmds.append(cmd) or 0.0)
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "data"), "--out", str(out), "--stages", "trained", "--total-minutes", "1"]
    assert demo.main(argv) == 0
    assert "the floor: the demo will run past 1.0 min" in capsys.readouterr().out
    assert json.loads((out / "budget.json").read_text())["minutes"] == demo.MIN_MINUTES
    (out / "budget.json").write_text(json.dumps({"total_minutes": 1.0, "minutes": 3.5}))  # as an earlier run left it
    assert demo.main(argv) == 0
    minutes = [c[c.index("--max-minutes") + 1] for c in cmds if "pipeline/train.py" in c]
    assert minutes == ["2.0", "3.5"]  # a rerun keeps the kept budget (same command: training resumes)
    assert demo.main([*argv, "--minutes", "4"]) == 0
    train = [c for c in cmds if "pipeline/train.py" in c][-1]
    assert train[train.index("--max-minutes") + 1] == "4.0"
