"""eval/report.py without matplotlib (an offline node's wheelhouse leaves it out): the chart is skipped with a
warning, every other result file is written."""

import json
import logging
import sys

from eval.report import write_all

RESULTS = {
    "model": "m", "flores": "f", "split": "devtest", "target": "eng_Latn", "margin": "ratio", "k": 4,
    "languages": {"fra_Latn": {"errors": 1, "n": 4, "error_pct": 25.0}},
    "average": {"errors": 1, "n": 4, "error_pct": 25.0},
}  # fmt: skip


def test_without_matplotlib_the_png_is_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with caplog.at_level(logging.WARNING):
        paths = write_all(RESULTS, tmp_path)
    assert sorted(paths) == ["csv", "json", "md"] and not (tmp_path / "results.png").exists()
    assert json.loads((tmp_path / "results.json").read_text()) == RESULTS
    assert "matplotlib is not installed" in caplog.text
