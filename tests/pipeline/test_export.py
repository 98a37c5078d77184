"""Export round trip: the HF directory gives the trained encoder's CLS embeddings, in transformers and in
sentence-transformers; bad sources fail with a message naming the path, and refusals change nothing on disk
."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.export import ExportError, consolidated_state_dict, export_checkpoint, load_trained_model, locate, main
from tests.pipeline.conftest import ROOT, run_env

SENTENCES = ["s1 s2 s3", "s4 s5 s6 s7 s8 s9", "s10", "t3 t4 s1 s0 unknownword"]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return tiny_run, export_checkpoint(str(tiny_run), str(tmp_path_factory.mktemp("export") / "hf"))


def _trained_cls(tiny_run, tok):
    """CLS embeddings of the trained encoder straight from the checkpoint (the packed model's own encoder)."""
    model, _, _ = load_trained_model(tiny_run)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        model.encoder.config._attn_implementation = "eager"
        return model.encoder(**batch).last_hidden_state[:, 0]


def test_hf_round_trip_gives_trained_cls(exported):
    from transformers import AutoTokenizer, XLMRobertaModel

    run, out = exported
    tok = AutoTokenizer.from_pretrained(out)
    hf = XLMRobertaModel.from_pretrained(out).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = hf(**batch).last_hidden_state[:, 0]  # the seed README's usage
    torch.testing.assert_close(cls, _trained_cls(run, tok), rtol=1e-5, atol=1e-5)


def test_sentence_transformers_loads_with_cls_pooling(exported):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, XLMRobertaModel

    _, out = exported
    st = SentenceTransformer(out, device="cpu")
    emb = torch.as_tensor(st.encode(SENTENCES, convert_to_numpy=True))
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        ref = XLMRobertaModel.from_pretrained(out).eval()(**tok(SENTENCES, padding=True, return_tensors="pt"))
    torch.testing.assert_close(emb, ref.last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


def test_export_of_one_checkpoint_dir_and_cli(tiny_run, tmp_path):
    import subprocess
    import sys

    ckpt = tiny_run / "checkpoints" / "step_00000006"
    assert locate(ckpt)[2] == "step_00000006"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.export", str(ckpt), str(tmp_path / "hf")],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not list((tmp_path / "hf").rglob("*.bin"))
    assert json.loads((tmp_path / "hf" / "mexma_export.json").read_text())["checkpoint"] == "step_00000006"
    assert (tmp_path / "hf" / "1_Pooling" / "config.json").is_file()


def test_export_refuses_a_dir_without_checkpoint(tmp_path):
    with pytest.raises(ExportError, match="neither a training output dir"):
        locate(tmp_path)


def test_export_skips_a_corrupted_latest(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    (latest / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    _, _, tag = locate(run)
    assert tag != latest.name and tag.startswith("step_")


def _snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (to show that a refusal changed nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_export_into_the_run_is_refused_and_changes_nothing(run_copy, where, caplog):
    out = {"same": run_copy, "inside": run_copy / "hf", "around": run_copy.parent}[where]
    before = _snapshot(run_copy.parent)
    with caplog.at_level(logging.ERROR):
        assert main([str(run_copy), str(out)]) == 2
    assert "Choose an OUT_DIR outside the run directory" in caplog.text and str(run_copy) in caplog.text
    assert _snapshot(run_copy.parent) == before
    locate(run_copy)  # the run is still exportable


def test_export_refuses_a_foreign_non_empty_dir(run_copy, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no earlier export"):
        export_checkpoint(str(run_copy), str(tmp_path / "notes"))


def test_overwritten_run_config_is_explained(run_copy):
    (run_copy / "config.json").write_text('{"model_type": "xlm-roberta"}')  # e.g. an HF export written into RUN
    with pytest.raises(ExportError, match=r"config.json: not a training config \(no 'model' section"):
        load_trained_model(run_copy)


def test_checkpoint_without_complete_record_needs_allow_unverified(run_copy, caplog):
    ckpt = run_copy / "checkpoints" / "step_00000006"
    (ckpt / "COMPLETE.json").unlink()
    with pytest.raises(ExportError, match=r"step_00000006 does not verify: .*COMPLETE.json missing.*--allow-unverif"):
        locate(ckpt)
    with caplog.at_level(logging.WARNING):
        assert locate(ckpt, allow_unverified=True)[2] == "step_00000006"
    assert "UNVERIFIED checkpoint" in caplog.text and "--allow-unverified" in caplog.text


def test_missing_partition_is_a_clear_error_not_a_traceback(run_copy, tmp_path, caplog):
    ckpt = run_copy / "checkpoints" / "step_00000006"
    (ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with caplog.at_level(logging.ERROR):
        assert main([str(ckpt), str(tmp_path / "hf")]) == 2
    assert "does not verify" in caplog.text and "optim_states.pt missing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([str(ckpt), str(tmp_path / "hf"), "--allow-unverified"]) == 2
    assert "DeepSpeed cannot consolidate it" in caplog.text and not (tmp_path / "hf").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def _poison(ckpt: Path, marker: Path) -> None:
    """Rewrite the model states file with an object that runs code when unpickled, and its COMPLETE.json entry
    with it (a received checkpoint's record certifies whatever its sender wrote)."""
    path = ckpt / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=False)
    state["payload"] = _RunsCode(marker)
    torch.save(state, path)
    record = json.loads((ckpt / "COMPLETE.json").read_text())
    record["files"][path.name] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (ckpt / "COMPLETE.json").write_text(json.dumps(record))


def test_checkpoint_that_would_run_code_is_refused_without_trust(run_copy, tmp_path, caplog):
    ckpt = run_copy / "checkpoints" / "step_00000006"
    marker = tmp_path / "code_ran"
    _poison(ckpt, marker)
    assert locate(ckpt)[2] == "step_00000006"  # it verifies: COMPLETE.json is no protection
    with caplog.at_level(logging.ERROR):
        assert main([str(ckpt), str(tmp_path / "hf")]) == 2
    assert "mp_rank_00_model_states.pt: needs os.makedirs" in caplog.text and "--trust-checkpoint" in caplog.text
    assert not marker.exists() and not (tmp_path / "hf").exists()
    consolidated_state_dict(run_copy / "checkpoints", "step_00000006", trust=True)  # the flag: DeepSpeed unpickles
    assert marker.exists()


def test_tag_names_a_checkpoint_of_the_run(run_copy):
    assert locate(run_copy, "step_00000004")[2] == "step_00000004"
    assert locate(run_copy, "latest")[2] == (run_copy / "checkpoints" / "latest").read_text().strip()
    with pytest.raises(ExportError, match=r"--tag best: .*checkpoints/best missing.*--xsim-every"):
        locate(run_copy, "best")
    (run_copy / "checkpoints" / "best").write_text("step_00000004\n")
    assert locate(run_copy, "best")[2] == "step_00000004"
    with pytest.raises(ExportError, match=r"--tag step_00000005: no checkpoint .*\(there: step_"):
        locate(run_copy, "step_00000005")
    with pytest.raises(ExportError, match="--tag needs a training output dir"):
        locate(run_copy / "checkpoints" / "step_00000004", "latest")
