"""Metrics without wandb (an offline node's wheelhouse leaves it out): a warning, metrics.jsonl still written."""

import json
import logging
import sys


def test_without_wandb_metrics_go_to_the_jsonl_only(tmp_path, monkeypatch, caplog):
    from pipeline.training.metrics import MetricsLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with caplog.at_level(logging.WARNING):
        logger = MetricsLogger(tmp_path, rank=0, wandb_mode="offline", log_every=1)
    logger.write({"split": "train", "step": 1, "loss": 2.5})
    logger.close()
    assert "wandb is not installed; --wandb offline ignored" in caplog.text
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2.5]
