"""Relaunch semantics and run records.

Unit cases: the classification of config differences, AdamW's two parameter groups, refusals when no checkpoint
verifies, --no-resume moving the old run aside, flag checks through `pipeline.train.main`. End-to-end (1-process CPU
runs on copies of the session-scoped finished 8-step `tiny_run`): a longer --max-steps continues the cosine over the new
length; a new --lr is refused unless --allow-config-change, and then used; another seed / model shape / data set is
refused naming each field; damaged checkpoints are refused listing each one; a refusal changes nothing on disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.data.synthetic import make_prepared
from pipeline.training import checkpoint as C
from pipeline.training.metrics import read_metrics
from pipeline.training.runrecord import RUN_FILES, RelaunchError, check_relaunch, compare
from pipeline.training.schedule import WarmupCosine, param_groups
from tests.pipeline.conftest import run_train, train_cmd
from tests.pipeline.test_checkpoint import _save

TINY_FLAGS = ("--max-steps", "8", "--save-every", "2", "--valid-every", "4")  # the tiny_run fixture's
LR = 1e-4  # the default --lr of tiny_run


# -- unit ------------------------------------------------------------------------------------------------------------
def _record(**changes) -> dict:
    from pipeline.config import config_from_dict, to_dict

    cfg = config_from_dict({"data": {"path": "/d"}, "run": {"output_dir": "/o", "max_steps": 8}})
    record = {
        "config": to_dict(cfg),
        "max_steps": 8,
        "manifest_sha256": "m",
        "tokenizer_sha256": "t",
        "data": "/d",
        "world_size": 1,
    }
    for key, value in changes.items():
        section, name = key.split("__")
        if section == "top":
            record[name] = value
        else:
            record["config"][section][name] = value
    return record


def test_differences_are_classified():
    old = _record()
    changes = compare(
        old,
        _record(
            run__seed=1,
            model__num_layers=3,
            top__manifest_sha256="x",
            optim__lr=2e-4,
            optim__betas=[0.9, 0.98],
            data__batch_pairs=16,
            run__log_every=5,
            optim__grad_accum=4,
            data__path="/moved",
            top__max_steps=16,
        ),
    )
    assert [c.split(":")[0] for c in changes.never] == ["--data", "--num-layers", "--seed"]
    assert [c.split(":")[0] for c in changes.change] == ["--batch-pairs", "--betas", "--lr"]
    assert [c.split(":")[0] for c in changes.free] == ["--data", "--grad-accum", "--log-every"]
    assert changes.extend.startswith("--max-steps (resolved): 8 in the checkpoint, 16 now")
    assert compare(old, _record(top__max_steps=4)).change[0].endswith("(a shorter schedule)")
    same = compare(old, copy.deepcopy(old))
    assert not (same.never or same.change or same.free or same.extend)


def test_a_replaced_tokenizer_is_seen_beside_an_unchanged_manifest(tmp_path):
    from pipeline.training.runrecord import tokenizer_sha256

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    manifest = {"tokenizer": {"sha256": "as recorded by data_prep"}}
    assert tokenizer_sha256(tmp_path, manifest) == hashlib.sha256(b"{}").hexdigest()
    assert tokenizer_sha256(tmp_path / "none", manifest) == "as recorded by data_prep"
    (line,) = compare(_record(), _record(top__tokenizer_sha256="other")).never
    assert line.startswith("tokenizer (--data's tokenizer/): 't' in the checkpoint, 'other' now")


def test_check_relaunch_refuses_never_always_and_change_without_the_flag(tmp_path):
    old = _record()
    with pytest.raises(RelaunchError, match=r"--seed: 0 in the checkpoint, 1 now \(cannot change on resume\)"):
        check_relaunch(tmp_path, old, _record(run__seed=1), allow_change=True)
    with pytest.raises(RelaunchError, match=r"--lr: 0.0001 in the checkpoint, 0.0002 now .*--allow-config-change"):
        check_relaunch(tmp_path, old, _record(optim__lr=2e-4), allow_change=False)
    assert check_relaunch(tmp_path, old, _record(optim__lr=2e-4), allow_change=True).change
    assert check_relaunch(tmp_path, old, _record(top__max_steps=80), allow_change=False).extend
    with pytest.raises(RelaunchError, match=r"holds no run_record.json: .*older version.*--no-resume"):
        check_relaunch(tmp_path, None, old, allow_change=True)  # refused up front, not in the load


def test_weight_decay_only_on_matrices():
    """The original's grouping: >= 2-dim parameters decayed, biases and LayerNorm weights not."""
    from pipeline.model.mexma import ModelConfig, build_model

    cfg = ModelConfig(
        model="tiny", num_layers=1, hidden_size=32, num_heads=2, ffn_size=64, head_layers=1, head_heads=2, head_ffn=64
    )
    model = build_model(cfg, 50, 1)
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any("LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert any("word_embeddings" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied weights once


def test_after_a_load_the_lr_and_optimizer_settings_are_the_configs():
    """LambdaLR.load_state_dict restores the old schedule's length and base lr, the optimizer its groups' settings:
    apply_optim_config replaces both from the config, keeping only the position (applied steps)."""
    from types import SimpleNamespace

    from pipeline.config import config_from_dict
    from pipeline.training.schedule import apply_optim_config

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    old = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(old, WarmupCosine(8, 0.3, 0.1, 0.0))
    for _ in range(8):
        old.step()
        sched.step()
    assert old.param_groups[0]["lr"] == 0.0  # the end of the old 8-step cosine: what a relaunch trained at
    cfg = config_from_dict(
        {"data": {"path": "/d"}, "run": {"output_dir": "/o"}, "optim": {"lr": 2e-4, "eps": 1e-6, "weight_decay": 0.1}}
    )
    apply_optim_config(SimpleNamespace(lr_scheduler=sched, module=model), cfg, max_steps=16, applied_steps=8)
    want = 2e-4 * WarmupCosine(16, 0.3, 0.1, 0.0)(8)
    assert [g["lr"] for g in old.param_groups] == [want, want] and sched.get_last_lr() == [want, want]
    assert [(g["eps"], g["weight_decay"]) for g in old.param_groups] == [(1e-6, 0.1), (1e-6, 0.0)]
    old.step()
    sched.step()
    assert old.param_groups[0]["lr"] == pytest.approx(2e-4 * WarmupCosine(16, 0.3, 0.1, 0.0)(9), rel=1e-12)


def test_no_checkpoint_that_verifies_is_refused_listing_each(tmp_path):
    """Checkpoints were completed but none verifies -> refused (never a silent fresh start)."""
    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    _save(mgr, 2)
    for tag in ("step_00000001", "step_00000002"):
        (mgr.root / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    with pytest.raises(C.NoUsableCheckpointError) as info:
        mgr.find_resume()
    message = str(info.value)
    assert "step_00000002: " in message and "step_00000001: " in message and "--no-resume" in message
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt has 1 bytes" in message


def test_a_first_save_killed_before_its_commit_is_a_fresh_start(tmp_path):
    mgr = C.CheckpointManager(tmp_path, keep=3)
    (mgr.root / "step_00000002").mkdir()  # files written, never committed: nothing was ever complete
    assert mgr.find_resume() is None


def test_no_resume_moves_the_old_run_aside_whole(tmp_path):
    """--no-resume: checkpoints, metrics, wandb id and records go into one OUTPUT/replaced-<time>/ folder."""
    from pipeline.training.metrics import _run_id

    mgr = C.CheckpointManager(tmp_path, keep=3)
    _save(mgr, 1)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "config.json").write_text("{}")
    old_id = _run_id(tmp_path)
    moved = mgr.set_aside(also=RUN_FILES)
    assert moved.parent == tmp_path and moved.name.startswith("replaced-")
    assert {p.name for p in moved.iterdir()} == {"checkpoints", "metrics.jsonl", "config.json", "wandb_id.txt"}
    assert (moved / "checkpoints" / "step_00000001" / C.COMPLETE).is_file()
    assert list(mgr.root.iterdir()) == [] and not (tmp_path / "metrics.jsonl").exists()
    assert _run_id(tmp_path) != old_id  # the new run gets a fresh wandb id


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--lr", "inf", "--lr: must be a finite number"),
        ("--weight-decay", "inf", "--weight-decay: must be a finite number"),
        ("--epochs", "inf", "--epochs: must be a finite number"),
        ("--eps", "nan", "--eps: must be a finite number"),
        ("--seed", "-1", "--seed: must lie in [0, 2**32)"),
        ("--model", "/nonexistent", "--model /nonexistent: the path does not exist"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(prepared, tmp_path, caplog, flag, value, expected):
    """Each refused through pipeline/train.py's main, before any output exists."""
    from pipeline.train import main

    out = tmp_path / "never"
    argv = ["--data", str(prepared), "--output-dir", str(out), "--max-steps", "2", flag, value]
    assert main(argv) == 2
    assert expected in caplog.text and not out.exists()


# -- end to end ------------------------------------------------------------------------------------------------------
def _snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file under out (what a refused relaunch must leave untouched)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_longer_max_steps_continues_the_cosine_over_the_new_length(prepared, tiny_run, tmp_path):
    """Relaunching a finished 8-step run with --max-steps 16 trains steps 9-16 at
    lr = WarmupCosine(16)(step - 1) x lr, not the restored 8-step schedule's lr 0."""
    out = _copy(tiny_run, tmp_path / "longer")
    proc = run_train(train_cmd(prepared, out, "--max-steps", "16", "--save-every", "2", "--valid-every", "4"))
    assert "resumed from" in proc.stderr
    schedule = WarmupCosine(16, 0.3, 0.1, 0.0)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[:8] == read_metrics(tiny_run)  # the first 8 kept as they were
    for r in rows[8:]:
        assert r["lr"] > 0 and r["lr"] == pytest.approx(LR * schedule(r["step"] - 1), rel=1e-12)
    assert json.loads((out / "config.json").read_text())["run"]["max_steps"] == 16  # the schedule in use
    record = json.loads((out / "checkpoints" / "step_00000016" / "run_record.json").read_text())
    assert record["max_steps"] == 16


def test_changed_lr_is_refused_then_accepted_with_the_flag(prepared, tiny_run, tmp_path):
    """A new --lr is refused (exit 2, nothing changed) unless --allow-config-change; then it is the lr in
    use, in the optimizer as in config.json."""
    out = _copy(tiny_run, tmp_path / "new_lr")
    before = _snapshot(out)
    flags = ("--max-steps", "12", "--save-every", "0", "--valid-every", "-1", "--lr", "2e-4", "--weight-decay", "0.1")
    proc = run_train(train_cmd(prepared, out, *flags), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--lr: 0.0001 in the checkpoint, 0.0002 now" in proc.stderr and "--allow-config-change" in proc.stderr
    assert "--weight-decay: 0.0 in the checkpoint, 0.1 now" in proc.stderr
    assert _snapshot(out) == before
    run_train(train_cmd(prepared, out, *flags, "--allow-config-change"))
    schedule = WarmupCosine(12, 0.3, 0.1, 0.0)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["lr"] for r in rows[8:]] == pytest.approx([2e-4 * schedule(s) for s in range(8, 12)], rel=1e-12)
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 2e-4
    optim = torch.load(
        out / "checkpoints" / "step_00000012" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        map_location="cpu",
        weights_only=False,
    )["optimizer_state_dict"]["base_optimizer_state"]
    assert [g["weight_decay"] for g in optim["param_groups"]] == [0.1, 0.0]  # two groups, matrices only


def test_what_cannot_change_is_refused_naming_each_field(prepared, tiny_run, tmp_path):
    """Another seed, model shape and data set, refused before config.json, run_info.json or tokenizer/ is
    rewritten."""
    out = _copy(tiny_run, tmp_path / "other")
    other = make_prepared(tmp_path / "other_data", seed=1)
    before = _snapshot(out)
    cmd = train_cmd(other, out, *TINY_FLAGS, "--seed", "1", "--allow-config-change")
    cmd[cmd.index("--num-layers") + 1] = "3"
    proc = run_train(cmd, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for field in ("--seed: 0 in the checkpoint, 1 now", "--num-layers: 2 in the checkpoint, 3 now", "--data: '"):
        assert field in proc.stderr, field
    assert "cannot change on resume" in proc.stderr and "--no-resume" in proc.stderr
    assert _snapshot(out) == before


def test_damaged_checkpoints_are_refused_then_no_resume_starts_over(prepared, tiny_run, tmp_path):
    """End to end: only the optimizer partitions damaged -> exit 2 listing each checkpoint, nothing
    touched; --no-resume then moves the old run (checkpoints, metrics, records) aside and starts at step 1."""
    out = _copy(tiny_run, tmp_path / "damaged")
    for part in (out / "checkpoints").glob("step_*/zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        part.write_bytes(part.read_bytes()[:100])
    before = _snapshot(out)
    proc = run_train(train_cmd(prepared, out, *TINY_FLAGS), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    tags = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert all(f"{tag}: " in proc.stderr for tag in tags) and "--no-resume" in proc.stderr
    assert _snapshot(out) == before
    run_train(train_cmd(prepared, out, "--max-steps", "2", "--save-every", "0", "--valid-every", "-1", "--no-resume"))
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    (moved,) = out.glob("replaced-*")
    assert read_metrics(moved) == read_metrics(tiny_run)
    assert {"checkpoints", "metrics.jsonl", "config.json", "run_info.json", "tokenizer"} <= {
        p.name for p in moved.iterdir()
    }
