"""Files `load_from_disk` opens are the verified ones: a state.json or a shard link pointing elsewhere is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.data import dataset as D


@pytest.fixture
def copy(prepared, tmp_path):
    dst = tmp_path / "prepared"
    shutil.copytree(prepared, dst)
    return dst


def _point_state_at(copy, filename: str) -> None:
    state_path = copy / "train" / "state.json"
    state = json.loads(state_path.read_text())
    state["_data_files"][0]["filename"] = filename
    state_path.write_text(json.dumps(state))


def test_state_json_pointing_outside_the_dataset_is_refused(copy, tmp_path):
    """The manifest's shards all verify, but load_from_disk would train on an unlisted file outside the dir."""
    outside = tmp_path / "elsewhere.arrow"
    shutil.copy(copy / "train" / "data-00000-of-00002.arrow", outside)  # same rows: the row count cannot tell
    for name in (str(outside), "../../elsewhere.arrow"):
        _point_state_at(copy, name)
        manifest = D.load_manifest(copy)
        with pytest.raises(D.DataError, match=r"train/state.json: data file .*elsewhere.arrow.* outside"):
            D.verify_shards(copy, manifest, "sha256")
        with pytest.raises(D.DataError, match="outside"):
            D.load_split(copy, "train", manifest)
        with pytest.raises(D.DataError, match="outside"):
            D.load_split(copy, "train")  # no manifest: still only files inside the split folder


def test_state_json_naming_an_unlisted_file_inside_is_refused(copy):
    extra = copy / "train" / "extra.bin"  # not *.arrow: the on-disk glob of verify_shards does not see it
    shutil.copy(copy / "train" / "data-00000-of-00002.arrow", extra)
    _point_state_at(copy, "extra.bin")
    with pytest.raises(D.DataError, match=r"'extra.bin' is not a 'train' shard in manifest.json"):
        D.verify_shards(copy, D.load_manifest(copy), "size")
    with pytest.raises(D.DataError, match="not a 'train' shard"):
        D.load_split(copy, "train", D.load_manifest(copy))


def test_a_shard_linked_out_of_the_dataset_is_refused(copy, tmp_path):
    shard = copy / "train" / "data-00000-of-00002.arrow"
    target = tmp_path / "moved.arrow"
    shutil.move(shard, target)
    shard.symlink_to(target)  # same bytes (sha256 matches), but the rows live outside the verified dir
    with pytest.raises(D.DataError, match=r"data-00000-of-00002.arrow \(train\): resolves to .*moved.arrow, outside"):
        D.verify_shards(copy, D.load_manifest(copy), "sha256")


def test_unreadable_state_json_is_named(copy):
    (copy / "valid" / "state.json").write_text("{")
    with pytest.raises(D.DataError, match=r"valid/state.json: unreadable"):
        D.load_split(copy, "valid", D.load_manifest(copy))


def test_good_dataset_still_verifies(prepared):
    manifest = D.load_manifest(prepared)
    D.verify_shards(prepared, manifest, "size")
    assert len(D.load_split(prepared, "train", manifest)) == 256
