"""Export round trip: the HF directory gives the trained encoder's CLS embeddings, in transformers and in
sentence-transformers; bad sources fail with a message naming the path."""

from __future__ import annotations

import shutil

import pytest
import torch

from pipeline.export import ExportError, export_checkpoint, load_trained_model, locate
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
    assert (tmp_path / "hf" / "model.safetensors").is_file()
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
