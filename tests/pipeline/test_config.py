"""Typed config: flags, config files, errors naming the flag, batch arithmetic, every shipped ds_configs/*.json and
every model preset."""

from __future__ import annotations

import json

import pytest

from pipeline.config import (
    ConfigError,
    config_from_dict,
    load_ds_config,
    parse_args,
    resolve_ds_config,
    to_dict,
)
from pipeline.training.schedule import WarmupCosine
from tests.pipeline.conftest import ROOT

DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
BASE = ["--data", "d", "--output-dir", "o"]


def test_make_train_command_line_parses():
    cfg = parse_args(
        [
            "--data",
            "data/prepared",
            "--output-dir",
            "runs/train",
            "--model",
            "tiny",
            "--ds-config",
            "ds_configs/zero2_cpu_fp32.json",
            "--max-steps",
            "200",
            "--save-every",
            "50",
        ]
    )
    assert (cfg.data.path, cfg.run.output_dir, cfg.model.model) == ("data/prepared", "runs/train", "tiny")
    assert (cfg.run.max_steps, cfg.run.save_every, cfg.run.resume) == (200, 50, True)
    assert (cfg.optim.lr, cfg.optim.warmup_fraction, cfg.optim.grad_clip) == (1e-4, 0.3, 1.2)  # the reference


def test_ablation_flags_reach_their_fields():
    cfg = parse_args(
        BASE
        + [
            "--mlm-weight",
            "0",
            "--koleo-weight",
            "0",
            "--koleo-global",
            "--lr",
            "3e-4",
            "--warmup-fraction",
            "0.1",
            "--src-mask-prob",
            "0.2",
            "--trg-mask-prob",
            "0.3",
            "--batch-pairs",
            "16",
            "--max-minutes",
            "9.5",
            "--seed",
            "7",
            "--no-resume",
            "--betas",
            "0.9",
            "0.98",
            "--wandb",
            "off",
        ]
    )
    assert (cfg.model.mlm_weight, cfg.model.koleo_weight, cfg.model.koleo_global) == (0.0, 0.0, True)
    assert (cfg.optim.lr, cfg.optim.warmup_fraction, cfg.optim.betas) == (3e-4, 0.1, [0.9, 0.98])
    assert (cfg.data.src_mask_prob, cfg.data.trg_mask_prob, cfg.data.batch_pairs) == (0.2, 0.3, 16)
    assert (cfg.run.max_minutes, cfg.run.seed, cfg.run.resume, cfg.run.wandb) == (9.5, 7, False, "off")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_then_flags_override(tmp_path, suffix):
    values = {"data": {"path": "from_file", "batch_pairs": 12}, "optim": {"lr": 5e-4}, "model": {"head_layers": 2}}
    path = tmp_path / f"c{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))
    cfg = parse_args(["--config", str(path), "--output-dir", "o", "--lr", "2e-4"])
    assert (cfg.data.path, cfg.data.batch_pairs, cfg.model.head_layers) == ("from_file", 12, 2)
    assert cfg.optim.lr == 2e-4  # the flag beats the file
    assert config_from_dict(to_dict(cfg)) == cfg  # the written config.json reloads to the same config


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--output-dir", "o"], "--data"),
        (BASE + ["--lr", "0"], "--lr"),
        (BASE + ["--warmup-fraction", "1.5"], "--warmup-fraction"),
        (BASE + ["--src-mask-prob", "1.0"], "--src-mask-prob"),
        (BASE + ["--batch-tokens", "100"], "--batch-tokens"),
        (BASE + ["--keep-checkpoints", "0"], "--keep-checkpoints"),
        (BASE + ["--head-layers", "0"], "^--head-layers: ModelConfig.head_layers must be a positive int"),
        (BASE + ["--attention", "kernel", "--attention-dropout", "0.1"], "^--attention-dropout: ModelConfig"),
        (BASE + ["--koleo-weight", "-1"], "--koleo-weight"),
        (BASE + ["--max-length", "600"], "--max-length"),
        (BASE + ["--fit-to-minutes"], "--fit-to-minutes"),  # no --max-minutes to fit
        (BASE + ["--fit-to-minutes", "--max-minutes", "5", "--fit-after", "4"], "--fit-after"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(ConfigError, match=flag):
        parse_args(argv)


def test_bad_config_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match=r"bad.json.*learning_rate"):
        parse_args(["--config", str(bad)] + BASE)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_args(["--config", str(bad)] + BASE)
    with pytest.raises(ConfigError, match="no such file"):
        parse_args(["--config", str(tmp_path / "missing.yaml")] + BASE)


def test_unknown_flag_and_bad_type_exit():
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--no-such-flag", "1"])
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--max-steps", "ten"])


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_every_ds_config_loads_and_validates(path):
    """Each shipped JSON, resolved from the typed config, passes DeepSpeed's own config parser."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = parse_args(BASE + ["--ds-config", str(path)])
    ds = resolve_ds_config(cfg, load_ds_config(str(path)), world_size=1)  # DeepSpeedConfig assumes 1 rank here
    assert "auto" not in json.dumps(ds)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == 2
    assert parsed.train_batch_size == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
    assert parsed.gradient_clipping == 1.2


def test_fp16_config_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "fp16.json"
    path.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"fp16.json: fp16 is not supported: .* use bf16"):
        load_ds_config(str(path))


def test_expected_ds_configs_are_shipped():
    assert {p.name for p in DS_CONFIGS} >= {"zero2_cpu_fp32.json", "zero2_bf16.json", "zero2_offload.json"}


def test_batch_arithmetic_precedence_and_error(tmp_path):
    ds = {"train_micro_batch_size_per_gpu": 150, "gradient_accumulation_steps": 2, "train_batch_size": "auto"}
    cfg = parse_args(BASE)
    assert resolve_ds_config(cfg, ds, 4)["train_batch_size"] == 150 * 2 * 4
    cfg = parse_args(BASE + ["--batch-pairs", "10", "--grad-accum", "3"])
    out = resolve_ds_config(cfg, ds, 2)
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) == (
        10,
        3,
        60,
    )
    derived = resolve_ds_config(parse_args(BASE + ["--batch-pairs", "8"]), {"train_batch_size": 64}, 2)
    assert derived["gradient_accumulation_steps"] == 4  # 64 / (8 x 2)
    with pytest.raises(
        ConfigError,
        match=r"train_batch_size 100 .* micro batch 8 .* accumulation 2 .* world size 4 "
        r"= 64",
    ):
        resolve_ds_config(parse_args(BASE + ["--batch-pairs", "8", "--grad-accum", "2"]), {"train_batch_size": 100}, 4)


def test_ds_json_may_not_contradict_the_typed_config(tmp_path):
    cfg = parse_args(BASE)
    with pytest.raises(ConfigError, match=r"lr = 0.001 conflicts with --lr 0.0001"):
        resolve_ds_config(cfg, {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, 1)
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError, match="remove the 'scheduler'"):
        load_ds_config(str(sched))
    no_check = tmp_path / "bf16.json"
    no_check.write_text(json.dumps({"bf16": {"enabled": True, "check_grad_overflow": False}}))
    with pytest.raises(ConfigError, match="check_grad_overflow must stay true"):
        load_ds_config(str(no_check))
    stage3 = tmp_path / "z3.json"
    stage3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="stage 3 unsupported"):
        load_ds_config(str(stage3))


@pytest.mark.parametrize("preset", ["tiny", "base", "large"])
def test_every_preset_validates(preset):
    from pipeline.model.mexma import encoder_config

    cfg = parse_args(BASE + ["--model", preset])
    enc = encoder_config(cfg.model, vocab_size=250002)
    expected = {"tiny": (4, 256, 4, 1024), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}[preset]
    assert (enc.num_hidden_layers, enc.hidden_size, enc.num_attention_heads, enc.intermediate_size) == expected


def test_schedule_is_linear_warmup_then_cosine():
    """torchvision's LinearLR(start_factor=0.1, total_iters=30) + CosineAnnealingLR(T_max=70), as the reference."""
    f = WarmupCosine(total_steps=100, warmup_fraction=0.3, start_factor=0.1, min_ratio=0.0)
    assert f(0) == pytest.approx(0.1)
    assert f(15) == pytest.approx(0.1 + 0.9 * 15 / 30)
    assert f(30) == pytest.approx(1.0)
    assert f(65) == pytest.approx(0.5)  # half way through the cosine
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(30, 100))
