"""The project as an installed distribution (pyproject.toml): its packages, its commands, and the `kernels` clash.

The metadata is built with setuptools' PEP 660 hook, the step `pip install -e .` runs first, into a temporary
directory (the venv is left alone). With that metadata on the path, transformers' probe for Hugging Face's `kernels`
package (`is_kernels_available`, run when a model class is imported) reads our distribution's version for the
import name `kernels` instead of importing our package to look for one (docs/training.md, "The kernels name").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"runtime", "kernels", "data_prep", "pipeline", "eval", "scripts"}
PROBE = "import sys; from transformers import XLMRobertaModel; print('kernels' in sys.modules)"


@pytest.fixture(scope="module")
def dist_info(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("metadata")
    hook = f"from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_editable({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", hook], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def _probe(*path: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(map(str, path))
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1] == "True"


def test_metadata_lists_every_package_and_the_commands(dist_info):
    assert set((dist_info / "top_level.txt").read_text().split()) == PACKAGES
    scripts = (dist_info / "entry_points.txt").read_text()
    for command, target in (("train", "pipeline.train"), ("export", "pipeline.export"), ("eval", "eval.cli")):
        assert f"mexma-{command} = {target}:main" in scripts
    meta = (dist_info / "METADATA").read_text()
    assert "Name: mexma-pipeline" in meta and "Requires-Dist: torch>=2.11" in meta


def test_installed_metadata_keeps_transformers_from_importing_our_kernels(dist_info):
    assert not _probe(dist_info.parent, ROOT)  # what `pip install -e .` gives


def _installed() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("mexma-pipeline")
    except PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(_installed(), reason="the venv holds the project's metadata (make setup): no bare path to probe")
def test_without_the_metadata_the_probe_imports_our_kernels(tmp_path):
    bare = tmp_path / "bare"  # the packages without any metadata (`make setup` leaves an .egg-info in the root)
    bare.mkdir()
    for package in PACKAGES:
        (bare / package).symlink_to(ROOT / package, target_is_directory=True)
    assert _probe(bare), "without the metadata the probe imports kernels/: the clash the install avoids"


# Imported, yet not a dependency: pip and its vendored packaging (scripts/wheelhouse.py runs under a node's pip);
# tests/, whose fixtures scripts/gpu_check.py uses from a checkout of the repository.
NOT_DEPENDENCIES = {"pip", "packaging", "tests"}


def _third_party_imports() -> dict[str, str]:
    """Top-level name of every absolute import in the packages that is neither stdlib nor ours -> one file using it."""
    import ast

    found = {}
    for package in sorted(PACKAGES):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - PACKAGES - set(sys.stdlib_module_names):
                    found.setdefault(top, path.relative_to(ROOT).as_posix())
    return found


def test_every_imported_distribution_is_a_dependency(dist_info):
    """pip install -e . brings everything the code imports: each import resolves (through the installed metadata)
    to a distribution named in Requires-Dist, an extra's included."""
    import importlib.metadata as md
    import re

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    meta = (dist_info / "METADATA").read_text()
    required = {norm(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                for line in meta.splitlines() if line.startswith("Requires-Dist:")}  # fmt: skip
    owners = md.packages_distributions()
    missing = []
    for name, where in sorted(_third_party_imports().items()):
        if name in NOT_DEPENDENCIES:
            continue
        dists = {norm(d) for d in owners.get(name, [name])}
        if not dists & required:
            missing.append(f"{name} ({where}; distribution {', '.join(sorted(dists))})")
    assert not missing, "imported but not in pyproject.toml's dependencies: " + "; ".join(missing)
