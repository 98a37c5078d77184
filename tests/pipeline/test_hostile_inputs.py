"""Received files never run code, what changes training is recorded by content, flag combinations that cannot do
what they say are refused before step 1, and bad inputs end in one clear error (exit 2) instead of a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_ds_config, parse_args, resolve_ds_config
from pipeline.data.sampler import pair_probabilities
from pipeline.data.synthetic import word_tokenizer
from pipeline.training import checkpoint as C
from pipeline.training.hooks import HookContext
from pipeline.training.runrecord import RelaunchError, check_relaunch, run_record
from runtime.received import RemoteCodeError, check_dir, load_tokenizer
from tests.pipeline.conftest import ROOT, TINY_MODEL_FLAGS


# -- a received file never runs code --------------------------------------------------------------------------------
def _with_auto_map(tok_dir: Path) -> Path:
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tok_dir / "evil.py").write_text(f"import os\nos.makedirs({str(tok_dir / 'ran')!r})\n")
    return tok_dir


@pytest.fixture
def evil_data(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    _with_auto_map(data / "tokenizer")
    return data


def test_auto_map_is_refused_naming_file_and_key(evil_data):
    with pytest.raises(RemoteCodeError, match=r"tokenizer_config.json declares 'auto_map'"):
        load_tokenizer(evil_data / "tokenizer", "--tokenizer")
    assert not (evil_data / "tokenizer" / "ran").exists()


def test_every_loader_refuses_auto_map(evil_data, tmp_path):
    from eval.encode import ModelError, _load_tokenizer
    from eval.train_hook import load_tokenizer as xsim_tokenizer
    from pipeline import export

    with pytest.raises(ConfigError, match="auto_map"):
        xsim_tokenizer(evil_data)  # the dataset's tokenizer, for --xsim-every
    with pytest.raises(ModelError, match="auto_map"):
        _load_tokenizer(str(evil_data / "tokenizer"), "--tokenizer")  # eval --tokenizer / --model
    with pytest.raises(export.ExportError, match="auto_map"):
        export.run_tokenizer(evil_data)  # a run dir's (checkpoint's) tokenizer/
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(RemoteCodeError, match=r"config.json declares 'auto_map'"):
        check_dir(model, "--model")
    (model / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    (model / "modules.json").write_text(json.dumps([{"type": "custom_module.Evil", "path": ""}]))
    with pytest.raises(RemoteCodeError, match="custom_module.Evil"):
        check_dir(model, "--model")
    assert not (evil_data / "tokenizer" / "ran").exists()


# -- what changes training is recorded by content --------------------------------------------------------------------
def _record(prepared, tmp_path, *extra, xsim=""):
    cfg = parse_args(["--data", str(prepared), "--output-dir", str(tmp_path / "out"), *TINY_MODEL_FLAGS, *extra])
    return run_record(cfg, 10, {"tokenizer": {}}, 1, {"xsim_sha256": xsim} if xsim else {})


def test_lang_weights_are_compared_by_content(prepared, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"fra_Latn-eng_Latn": 1.0}))
    b.write_text(a.read_text())
    old = _record(prepared, tmp_path, "--lang-weights", str(a))
    check_relaunch(tmp_path, old, _record(prepared, tmp_path, "--lang-weights", str(b)), False)  # same content
    a.write_text(json.dumps({"fra_Latn-eng_Latn": 2.0}))  # edited in place
    with pytest.raises(RelaunchError, match=r"--lang-weights \(its content\)"):
        check_relaunch(tmp_path, old, _record(prepared, tmp_path, "--lang-weights", str(a)), False)
    check_relaunch(tmp_path, old, _record(prepared, tmp_path, "--lang-weights", str(a)), True)


def test_another_xsim_test_set_needs_allow_config_change(prepared, tmp_path):
    old = _record(prepared, tmp_path, xsim="f1")
    check_relaunch(tmp_path, old, _record(prepared, tmp_path, xsim="f1"), False)
    check_relaunch(tmp_path, old, _record(prepared, tmp_path), False)  # xsim off: not compared
    with pytest.raises(RelaunchError, match=r"--xsim-data \(the test set\)"):
        check_relaunch(tmp_path, old, _record(prepared, tmp_path, xsim="f2"), False)


def test_best_is_compared_only_within_one_test_set(tmp_path, caplog):
    from eval.train_hook import METRIC, XsimHook, test_set_fingerprint

    assert test_set_fingerprint("dev", "eng_Latn", {"a": ["x"]}, None) != test_set_fingerprint(
        "dev", "eng_Latn", {"a": ["y"]}, None
    )
    mgr = C.CheckpointManager(tmp_path, keep=3)
    mgr.root.joinpath("step_00000002").mkdir()
    (mgr.root / "step_00000002" / C.COMPLETE).write_text("{}")
    mgr.mark_best("step_00000002", 2, -1.0, METRIC, fingerprint="other-test-set")  # unbeatable on its own set
    evaluator = SimpleNamespace(
        fingerprint="this-test-set", rank=0, tokens=0, run=lambda model, device: {METRIC: 50.0, "xsim_s": 0.0}
    )
    saved = []

    def save_best(score, metric, fingerprint):  # as the trainer's: save the step, mark it best
        saved.append(4)
        mgr.mark_best("step_00000002", 4, score, metric, fingerprint=fingerprint)

    ctx = HookContext(step=4, model=None, device=torch.device("cpu"), write=lambda r: None, best=mgr.best,
                      save_best=save_best, elapsed=lambda: 0.0)  # fmt: skip
    hook = XsimHook(evaluator, every=2)
    hook._log = lambda r: None
    with caplog.at_level(logging.WARNING):
        record = hook.evaluate(ctx)
    assert record["is_best"] and saved == [4] and "new `best` lineage" in caplog.text
    assert mgr.best()["fingerprint"] == "this-test-set"


# -- language weights without overflow ------------------------------------------------------------------------------
def test_huge_weights_and_alpha_normalise_without_overflow():
    p = pair_probabilities(np.array([200, 40, 16]), 1.0, {0: 1e308, 1: 1e308})
    assert np.isfinite(p).all() and p[0] == pytest.approx(0.5) and p[1] == pytest.approx(0.5)
    p = pair_probabilities(np.array([200, 40, 16]), 1000.0)  # 200 ** 1000 overflows float64
    assert p.tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(pair_probabilities(np.array([9, 1]), 0.5), [0.75, 0.25])


# -- flag combinations refused before step 1 ------------------------------------------------------------------------
@pytest.mark.parametrize("max_steps", ["5", "20"])
def test_fit_to_minutes_needs_steps_after_the_fit(prepared, tmp_path, max_steps):
    argv = ["--data", str(prepared), "--output-dir", str(tmp_path), "--fit-to-minutes", "--max-minutes", "1"]
    with pytest.raises(ConfigError, match=r"--fit-to-minutes: --max-steps \d+ is not above --fit-after 20"):
        parse_args(argv + ["--max-steps", max_steps])
    parse_args(argv + ["--max-steps", "21"])


def _ds(cfg_argv, tmp_path, previous):
    cfg = parse_args(["--data", "d", "--output-dir", str(tmp_path), *cfg_argv])
    ds = load_ds_config(str(ROOT / "ds_configs/zero2_cpu_fp32.json"))
    return resolve_ds_config(cfg, ds, 1, previous)


def test_the_json_accumulation_is_rescaled_on_another_world_size(tmp_path):
    previous = {"micro": 8, "gas": 1, "world_size": 2}
    assert _ds(["--batch-pairs", "8"], tmp_path, previous)["gradient_accumulation_steps"] == 2
    with pytest.raises(ConfigError, match=r"--grad-accum 1: .*needs --grad-accum 2"):
        _ds(["--batch-pairs", "8", "--grad-accum", "1"], tmp_path, previous)


def test_the_batch_record_is_found_without_latest(tmp_path):
    for step, world in ((2, 2), (4, 2)):
        ckpt = tmp_path / "checkpoints" / C.tag_for(step)
        ckpt.mkdir(parents=True)
        (ckpt / C.COMPLETE).write_text("{}")
        (ckpt / C.RUN_RECORD).write_text(json.dumps({"batch": {"micro": 8, "gas": 1, "world_size": world, "s": step}}))
    (tmp_path / "checkpoints" / "step_00000006").mkdir()  # never completed
    assert C.latest_batch_record(tmp_path)["s"] == 4  # no `latest` file: the newest complete checkpoint


# -- export leftovers -----------------------------------------------------------------------------------------------
def test_a_killed_exports_temporary_dirs_are_removed(tmp_path):
    from pipeline.export import remove_stale_temporaries

    out = tmp_path / "hf"
    dead = tmp_path / ".hf.tmp999999999"
    live = tmp_path / f".hf.tmp{os.getpid()}"
    other = tmp_path / ".other.tmp999999999"
    for d in (dead, live, other):
        d.mkdir()
    assert remove_stale_temporaries(out) == [dead]
    assert live.exists() and other.exists() and not dead.exists()


# -- a pretrained --model that does not fit the data ----------------------------------------------------------------
def test_a_pretrained_model_with_another_vocabulary_exits_2(prepared, tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tests.pipeline.conftest import run_train, train_cmd

    model = tmp_path / "pretrained"
    config = XLMRobertaConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(model))
    cmd = train_cmd(prepared, tmp_path / "out", "--max-steps", "1")
    cmd[cmd.index("tiny")] = str(model)
    for flag in ("--num-layers", "--hidden-size", "--num-heads", "--ffn-size"):  # preset shapes only
        del cmd[cmd.index(flag) : cmd.index(flag) + 2]
    proc = run_train(cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--model {model}: model" in proc.stderr and "vocab_size 30" in proc.stderr


# -- evaluation inputs ----------------------------------------------------------------------------------------------
def test_only_flores_codes_are_languages(tmp_path, caplog):
    from eval.data import available_languages

    (tmp_path / "dev").mkdir()
    for name in ("eng_Latn.dev", "fra_Latn.dev", "README.dev", "fra_Latn copy.dev"):
        (tmp_path / "dev" / name).write_text("a\n")
    with caplog.at_level(logging.WARNING):
        assert available_languages(tmp_path, "dev") == ["eng_Latn", "fra_Latn"]
    assert "README.dev" in caplog.text and "fra_Latn copy.dev" in caplog.text


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    from eval.encode import ModelError, check_vocabulary
    from runtime.received import tokenizer_fingerprint

    tok = word_tokenizer(["a", "b", "c"], tmp_path / "tok")
    with pytest.raises(ModelError, match=r"has \d+ ids, the model's embedding table 4 rows"):
        check_vocabulary(str(tmp_path), tok, 4, "--tokenizer x")
    (tmp_path / "mexma_export.json").write_text(json.dumps({"tokenizer_fingerprint": "0" * 64}))
    with pytest.raises(ModelError, match="not the one .* was trained with"):
        check_vocabulary(str(tmp_path), tok, 1000, "--tokenizer x")  # fewer ids, but another vocabulary
    (tmp_path / "mexma_export.json").write_text(json.dumps({"tokenizer_fingerprint": tokenizer_fingerprint(tok)}))
    check_vocabulary(str(tmp_path), tok, 1000, "--tokenizer x")


def test_truncated_or_pickled_weights_are_refused_without_unsafe_advice(tmp_path):
    import torch
    from safetensors.torch import save_file

    from eval.encode import ModelError, check_weights_file

    save_file({"w": torch.zeros(64, 64)}, str(tmp_path / "model.safetensors"))
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="damaged or truncated"):
        check_weights_file(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    torch.save({"w": SimpleNamespace(x=1)}, tmp_path / "pytorch_model.bin")  # needs the full unpickler
    with pytest.raises(ModelError, match="could run code") as info:
        check_weights_file(str(tmp_path))
    assert "weights_only=False" not in str(info.value) and "trust" not in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [["--world", "0"], ["--world", "-2"], ["--batches", "0"], ["--batches", "-3"], ["--pairs", "10"],
     ["--pairs", "nan"], ["--pairs", "inf"], ["--pairs", "1e30"]],
)  # fmt: skip
def test_bench_sampler_refuses_bad_flags(argv, capsys):
    from pipeline.bench_sampler import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_bench_sampler_dir_file_and_truncated_cache(tmp_path, capsys):
    from pipeline.bench_sampler import main

    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["--dir", str(tmp_path / "f"), "--pairs", "2e4"])
    assert info.value.code == 2 and "not a directory" in capsys.readouterr().err
    args = ["--dir", str(tmp_path), "--pairs", "2e4", "--batches", "2", "--modes", "fixed", "--world", "1"]
    assert main(args) == 0
    path = tmp_path / "20000" / "lengths.npy"
    path.write_bytes(path.read_bytes()[:1000])  # truncated: written again, not a traceback in the child
    assert main(args) == 0 and path.stat().st_size > 1000
