"""docs/training.md's code map is generated from the modules' docstrings (pipeline/codemap.py) and kept current."""

from __future__ import annotations

import pytest

from pipeline import codemap


def test_docs_training_md_holds_the_current_code_map():
    doc = (codemap.ROOT / "docs" / "training.md").read_text()
    stale = "docs/training.md's code map is stale: run `python -m pipeline.codemap --write-docs docs/training.md`"
    assert codemap.with_map(doc) == doc, stale


def test_every_module_is_in_the_map_and_a_module_without_docstring_is_refused(tmp_path):
    text = codemap.codemap()
    for path in (
        "runtime/collectives.py",
        "pipeline/training/trainer.py",
        "eval/train_hook.py",
        "tests/test_codemap.py",
    ):
        assert f"| `{path}` |" in text
    pkg = tmp_path / "runtime"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")  # an empty package marker is left out
    (pkg / "fine.py").write_text('"""Does one thing.\n\nDetails."""\n')
    assert "| `runtime/fine.py` | Does one thing. |" in codemap.codemap(tmp_path).split("**`kernels/`**")[0]
    (pkg / "bare.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="runtime/bare.py: no module docstring"):
        codemap.codemap(tmp_path)
