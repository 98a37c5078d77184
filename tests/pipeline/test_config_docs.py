"""The docs' flag table is generated from the same help texts as `--help`."""

from __future__ import annotations

import dataclasses

from pipeline.config import build_parser, flag_table
from pipeline.config.__main__ import with_table
from pipeline.config.schema import SECTIONS, flag_name, section_fields
from tests.pipeline.conftest import ROOT


def test_every_field_has_a_help_text_shown_by_help_and_docs():
    help_text = build_parser().format_help()
    table = flag_table()
    for section in SECTIONS:
        for f, _ in section_fields(section):
            text = f.metadata.get("help", "")
            assert text, f"{section}.{f.name} has no help text (declare it with pipeline.fields.opt)"
            assert f"--{flag_name(f)}" in help_text and f"`--{flag_name(f)}" in table
            assert text.split()[0] in table


def test_docs_training_md_holds_the_generated_table():
    doc = (ROOT / "docs" / "training.md").read_text()
    stale = "docs/training.md is stale: run `python -m pipeline.config --write-docs docs/training.md`"
    assert with_table(doc) == doc, stale


def test_model_config_fields_carry_their_help_in_metadata():
    from pipeline.model.mexma import ModelConfig

    assert all(f.metadata.get("help") for f in dataclasses.fields(ModelConfig))


def test_missing_model_path_is_named_before_preset_overrides():
    import pytest

    from pipeline.config import ConfigError, parse_args

    with pytest.raises(ConfigError, match="--model /nonexistent: the path does not exist"):
        parse_args(["--data", "d", "--output-dir", "o", "--model", "/nonexistent", "--num-layers", "2"])


def test_config_json_records_the_resolved_backends_and_still_loads_as_config(tiny_run):
    """the start-up choices go to config.json under "resolved", which `--config`
    skips, so `--config OUTPUT/config.json` still reproduces the run."""
    import json

    from pipeline.config import config_from_dict, load_config_file

    written = json.loads((tiny_run / "config.json").read_text())
    backends = written["resolved"]["backends"]
    assert backends["encoder"]["backend"] == "sdpa" and "no CUDA" in backends["encoder"]["reason"]
    assert "koleo" in backends and "pair_shares" in written["resolved"]
    cfg = config_from_dict(load_config_file(str(tiny_run / "config.json")))
    assert cfg.run.output_dir == written["run"]["output_dir"]
