"""Training recipes as files (recipes/*.json, `train.py --recipe`): every shipped recipe loads and names only existing
flags, the precedence default < recipe < --config < flag, errors naming the file and the flag, and config.json."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.config import ConfigError, parse_args, to_dict
from pipeline.config.recipes import RECIPES_DIR, flag_fields, load_recipe, read_recipe, recipe_names
from tests.pipeline.conftest import ROOT, run_train, train_cmd

BASE = ["--data", "d", "--output-dir", "o"]


def _field_value(cfg, flag: str):
    section, f, _ = flag_fields()[flag]
    return getattr(getattr(cfg, section), f.name)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_loads_and_every_key_is_an_existing_flag(name, monkeypatch):
    # the paper's recipe names a hub model: the offline hub check (tested in tests/runtime) is not what this checks
    monkeypatch.setattr("pipeline.config.schema.check_hub_name", lambda *a, **k: None)
    flags = read_recipe(name)
    assert flags and set(flags) <= set(flag_fields()), f"recipes/{name}.json: unknown {set(flags) - set(flag_fields())}"
    cfg = parse_args(["--recipe", name, *BASE])  # validated like any command line
    assert cfg.run.recipe == name
    for flag, value in flags.items():
        assert _field_value(cfg, flag) == value, f"recipes/{name}.json: --{flag}"


def test_the_shipped_recipes_are_the_papers_and_ones_that_learn_on_a_cpu():
    assert {"paper", "tiny-cpu", "tiny-paper"} <= set(recipe_names())
    paper = read_recipe("paper")
    assert (paper["model"], paper["lr"], paper["warmup-fraction"]) == ("xlm-roberta-large", 1e-4, 0.3)
    assert (paper["mlm-weight"], paper["cls-weight"], paper["koleo-weight"]) == (1.0, 1.0, 0.01)
    assert (paper["batch-pairs"], paper["grad-accum"], paper["max-length"]) == (150, 2, 200)
    tiny_paper = read_recipe("tiny-paper")
    for flag in ("lr", "warmup-fraction", "mlm-weight", "cls-weight", "koleo-weight", "koleo-global"):
        assert tiny_paper[flag] == paper[flag], flag  # the paper's hyperparameters on tiny-cpu's model
    shape = ("model", "num-layers", "hidden-size", "head-layers", "head-ffn", "batch-pairs", "ds-config")
    assert all(tiny_paper.get(k) == read_recipe("tiny-cpu").get(k) for k in shape)


def test_make_train_uses_the_recipe_that_learns_at_its_scale():
    makefile = (ROOT / "Makefile").read_text()
    train = re.search(r"^train:.*?\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    flags = re.search(r"^TRAIN_FLAGS = (.*)$", makefile, flags=re.M).group(1)
    assert "$(TRAIN_FLAGS)" in train and "--recipe tiny-cpu" in flags


def test_flags_and_config_file_override_the_recipe(tmp_path):
    cfg = parse_args(["--recipe", "tiny-cpu", *BASE, "--lr", "3e-3", "--no-koleo-global"])
    assert (cfg.optim.lr, cfg.model.koleo_global, cfg.model.cls_weight) == (3e-3, False, 5.0)
    assert parse_args(BASE).optim.lr == 1e-4  # no recipe: the built-in defaults
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"optim": {"warmup_fraction": 0.2}, "run": {"recipe": "tiny-paper"}}))
    cfg = parse_args(["--config", str(conf), *BASE, "--recipe", "tiny-cpu"])  # the flag's recipe, the file's warmup
    assert (cfg.run.recipe, cfg.optim.lr, cfg.optim.warmup_fraction) == ("tiny-cpu", 1e-3, 0.2)
    cfg = parse_args(["--config", str(conf), *BASE])  # a recipe named in the file applies under the file
    assert (cfg.optim.lr, cfg.optim.warmup_fraction, cfg.model.koleo_weight) == (1e-4, 0.2, 0.01)
    assert to_dict(cfg)["run"]["recipe"] == "tiny-paper"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"flags": {"lr": 1e-3, "learning-rate": 1}}, "'learning-rate' is not a train.py flag"),
        ({"flags": {"koleo-global": 1}}, "'koleo-global': expected bool, got 1"),
        ({"flags": {"betas": 0.9}}, "'betas': expected list"),
        ({"flags": {"verify": "md5"}}, "'verify': 'md5' is not one of"),
        ({"flag": {"lr": 1e-3}}, 'expected {"description": "...", "flags"'),
        ("{not json", "cannot parse"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_file_and_the_flag(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=re.escape(f"--recipe {path}: ") + ".*" + re.escape(message)):
        load_recipe(str(path))


def test_a_missing_recipe_lists_the_shipped_ones(caplog):
    from pipeline.train import main

    with pytest.raises(ConfigError, match=r"--recipe tiny-gpu: no such recipe .*tiny-cpu"):
        parse_args(["--recipe", "tiny-gpu", *BASE])
    assert main(["--recipe", "nope.json", *BASE]) == 2  # refused before anything starts
    assert "--recipe nope.json: no such recipe" in caplog.text
    assert RECIPES_DIR == ROOT / "recipes"


def test_the_recipe_values_reach_config_json_and_a_relaunch_compares_only_values(prepared, tmp_path):
    recipe = tmp_path / "small.json"
    flags = {"lr": 0.002, "warmup-fraction": 0.25, "koleo-weight": 0.5, "koleo-global": True, "head-dropout": 0.0}
    recipe.write_text(json.dumps({"description": "a test recipe", "flags": flags}))
    out = tmp_path / "run"
    run_train(train_cmd(prepared, out, "--recipe", str(recipe), "--max-steps", "2", "--valid-every", "-1"))
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["recipe"] == str(recipe)
    assert (config["optim"]["lr"], config["optim"]["warmup_fraction"]) == (0.002, 0.25)
    assert (config["model"]["koleo_weight"], config["model"]["koleo_global"], config["model"]["head_dropout"]) == (
        0.5,
        True,
        0.0,
    )
    from pipeline.training.runrecord import compare  # a relaunch may spell the values out instead of naming the recipe

    old = {"config": config, "max_steps": 2}
    new = {"config": {**config, "run": {**config["run"], "recipe": ""}}, "max_steps": 2}
    changes = compare(old, new)
    assert changes.free == [f"--recipe: {str(recipe)!r} in the checkpoint, '' now"] and not changes.change
