"""Training's --model: a hub name without network is refused at once, naming the offline alternatives."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, parse_args


def test_hub_model_offline_is_refused_naming_presets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        parse_args(["--data", "d", "--output-dir", "o", "--model", "org-that-is-not-cached/model-x"])
    msg = str(e.value)
    assert msg.startswith("--model org-that-is-not-cached/model-x:") and "tiny" in msg and "\n" not in msg


def test_preset_needs_no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert parse_args(["--data", "d", "--output-dir", "o", "--model", "tiny"]).model.model == "tiny"
