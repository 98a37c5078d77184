"""`--model` errors that point to the fix: a missing folder says what makes one; a hub name offline fails at once."""

from __future__ import annotations

import pytest

from eval.encode import ModelError, export_if_needed


@pytest.mark.parametrize("model", ["runs/demo/train", "./my-model", "/nowhere/at/all"])
def test_missing_model_folder_names_what_makes_one(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError) as e:
        export_if_needed(model, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(f"--model {model}: no such directory")
    assert "make demo" in msg and "make train" in msg and "MODEL=" in msg


def test_hub_name_offline_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        export_if_needed("org-that-is-not-cached/model-x", tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "char3gram" in msg
