"""Derived sampling files (data_prep/lengths.py) are checked against the shards they derive from: a record or array
that lies, even consistently (sizes and sha256 updated), is rebuilt by the trainer, never trusted or read into an
IndexError / KeyError / AttributeError; a full disk is an error naming the device with no temporary file left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import namedtuple

import numpy as np
import pytest

from data_prep import lengths as L
from pipeline.data import dataset as D
from tests.pipeline.test_sampler import _multi_pair_copy


@pytest.fixture
def data(prepared, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(prepared, out, ignore=shutil.ignore_patterns("sampling"))  # earlier tests may have built them
    return out


def _rows(data) -> int:
    return sum(s["rows"] for s in D.load_manifest(data)["shards"] if s["split"] == "train")


def _lie(data, edit_meta=None, arrays=None) -> None:
    """Rewrite the record (and arrays) so that sizes, sha256 and the digest all agree with the lie."""
    path = L.meta_path(data, "train")
    meta = json.loads(path.read_text())
    for suffix, array in (arrays or {}).items():
        f = L.sampling_dir(data) / f"train_{suffix}.npy"
        np.save(f, array)
        meta["files"][f.name] = {"size": f.stat().st_size, "sha256": L._sha256(f)}
    if edit_meta:
        edit_meta(meta)
    meta["digest"] = L.digest(meta)
    path.write_text(json.dumps(meta))


def _tables(data):
    return D.sampling_tables(data, "train", D.load_manifest(data))


def test_swapped_pair_names_are_seen_and_rebuilt(prepared, tmp_path):
    data = _multi_pair_copy(prepared, tmp_path)
    truth = _tables(data)
    names = list(truth["pairs"])

    def swap(meta):
        meta["pairs"] = [names[1], names[0], *names[2:]]
        meta["counts"] = [meta["counts"][1], meta["counts"][0], *meta["counts"][2:]]  # consistent with the names

    _lie(data, swap)
    with pytest.raises(L.LengthsError):
        L.open_sampling_files(data, "train", _rows(data), deep=True)
    assert _tables(data)["pairs"] == names  # rebuilt from the shards


def test_lengths_that_lie_consistently_are_rebuilt(data):
    true = np.asarray(_tables(data)["lengths"]).copy()
    _lie(data, arrays={"lengths": np.ones_like(true)})
    with pytest.raises(L.LengthsError, match="token counts differ"):
        L.open_sampling_files(data, "train", _rows(data), deep=True)
    np.testing.assert_array_equal(np.asarray(_tables(data)["lengths"]), true)


@pytest.mark.parametrize("content", ["[1]", "{}", '{"version": 2}', "not json"])
def test_a_malformed_record_is_rebuilt(data, content):
    _tables(data)
    L.meta_path(data, "train").write_text(content)
    with pytest.raises(L.LengthsError):
        L.open_sampling_files(data, "train", _rows(data))
    assert len(_tables(data)["lengths"]) == _rows(data)


def test_a_record_without_files_is_rebuilt(data):
    _tables(data)
    _lie(data, lambda meta: meta.pop("files"))
    with pytest.raises(L.LengthsError, match="files"):
        L.open_sampling_files(data, "train", _rows(data))
    assert "files" in _tables(data)["meta"]


def test_counts_above_the_rows_and_an_index_out_of_range_are_rebuilt(data):
    rows = _rows(data)
    index = np.asarray(_tables(data)["pair_index"]).copy()

    def more(meta):
        meta["counts"] = [rows * 10]

    _lie(data, more)
    with pytest.raises(L.LengthsError, match="counts"):
        L.open_sampling_files(data, "train", rows)
    assert _tables(data)["counts"].tolist() == [rows]
    bad = index.copy()
    bad[5] = rows + 1000
    _lie(data, arrays={"pair_index": bad})
    with pytest.raises(L.LengthsError, match="out of range"):
        L.open_sampling_files(data, "train", rows, deep=True)
    np.testing.assert_array_equal(np.asarray(_tables(data)["pair_index"]), index)


def test_files_built_from_other_shards_are_rebuilt(data):
    _tables(data)
    manifest = D.load_manifest(data)
    shards = [dict(s, sha256="0" * 64) if s["split"] == "train" else s for s in manifest["shards"]]
    with pytest.raises(L.LengthsError, match="other shards"):
        L.open_sampling_files(data, "train", _rows(data), shards=[s for s in shards if s["split"] == "train"])


def test_a_vocab_size_below_the_shards_ids_is_refused(data):
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 10
    manifest["tokenizer"]["special_ids"]["mask"] = 9
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(D.DataError, match=r"token id \d+ in the shards.*vocab_size is 10"):
        D.sampling_tables(data, "train", D.load_manifest(data))
    with pytest.raises(D.DataError, match=r"valid: token id \d+.*vocab_size is 10"):
        D.load_split(data, "valid", D.load_manifest(data))


Usage = namedtuple("Usage", "total used free")


def test_too_little_space_for_the_sampling_files_is_refused_before_writing(data, monkeypatch):
    monkeypatch.setattr(L.shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 100, 100))
    with pytest.raises(D.DataError, match="no space left on the device"):
        _tables(data)
    assert not list(L.sampling_dir(data).iterdir())


@pytest.fixture
def full_sampling_dir(data):
    """DATA/sampling on an 8 KiB tmpfs, filled (needs root and mount rights; skipped elsewhere)."""
    mnt = L.sampling_dir(data)
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:  # take every block the tmpfs has
            while f.write(b"x" * 4096):
                pass
    except OSError:
        pass  # full
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.faults
@pytest.mark.parametrize("precheck", [True, False])
def test_a_full_disk_while_building_sampling_files(full_sampling_dir, monkeypatch, precheck):
    """No SIGBUS: the space is checked first, and reserved before mapping (the second case skips the check)."""
    if not precheck:
        monkeypatch.setattr(L, "_check_space", lambda out, n: None)
    with pytest.raises(D.DataError, match="no space left on the device"):
        _tables(full_sampling_dir)
    assert [p.name for p in L.sampling_dir(full_sampling_dir).iterdir()] == ["filler"]  # no temporary file left
