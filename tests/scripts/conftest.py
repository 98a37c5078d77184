"""Fixtures of the scripts' tests: the tiny prepared dataset of the pipeline tests (tests/pipeline/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.synthetic import make_prepared


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared dataset directory (contract 1); read-only."""
    return make_prepared(tmp_path_factory.mktemp("prepared"))
