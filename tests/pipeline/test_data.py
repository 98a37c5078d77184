"""Prepared-dataset checks (clear errors naming the shard before training) and the distributed batch sampler."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.data import dataset as D
from pipeline.data.sampler import DistributedBatchSampler


@pytest.fixture
def copy(prepared, tmp_path):
    """A private, writable copy of the shared prepared dataset."""
    dst = tmp_path / "prepared"
    shutil.copytree(prepared, dst)
    return dst


def test_good_dataset_verifies_and_loads(prepared):
    manifest = D.load_manifest(prepared)
    D.verify_shards(prepared, manifest, "sha256")
    train = D.load_split(prepared, "train", manifest)
    assert len(train) == 256
    lengths = D.pair_lengths(train, max_length=200)
    assert lengths.shape == (256, 2) and lengths.min() >= 4  # <s> + >= 2 words + </s>
    row = train[0]
    assert row["src_ids"][0] == 0 and row["src_ids"][-1] == 2


def test_missing_shard_is_named(copy):
    (copy / "train" / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(D.DataError, match=r"train/data-00001-of-00002.arrow.*missing on disk"):
        D.verify_shards(copy, D.load_manifest(copy), "size")


def test_corrupted_shard_is_named(copy):
    path = copy / "train" / "data-00000-of-00002.arrow"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # one flipped byte inside the last record batch: same size, same rows
    path.write_bytes(bytes(data))
    with pytest.raises(D.DataError, match=r"data-00000-of-00002.arrow: sha256 differs"):
        D.verify_shards(copy, D.load_manifest(copy), "sha256")


def test_truncated_shard_is_named(copy):
    path = copy / "train" / "data-00000-of-00002.arrow"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(D.DataError, match=r"data-00000-of-00002.arrow"):
        D.verify_shards(copy, D.load_manifest(copy), "size")


def test_manifest_out_of_date_is_named(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(D.DataError, match=r"data-00000-of-00002.arrow: 128 rows on disk, manifest says 129"):
        D.verify_shards(copy, D.load_manifest(copy), "size")
    manifest["shards"][0]["rows"] -= 1
    manifest["shards"] = manifest["shards"][1:]  # a shard on disk the manifest forgot
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(D.DataError, match=r"data-00000-of-00002.arrow: on disk but not in .*manifest"):
        D.verify_shards(copy, D.load_manifest(copy), "size")


def test_bad_manifest_is_named(copy):
    (copy / "manifest.json").write_text("{")
    with pytest.raises(D.DataError, match="manifest.json: invalid JSON"):
        D.load_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(D.DataError, match="manifest.json: missing"):
        D.load_manifest(copy)


def test_training_refuses_a_corrupted_shard_before_starting(copy, tmp_path):
    """The entry point stops with the shard's name (exit code 2) before building any model."""
    from tests.pipeline.conftest import run_train, train_cmd

    path = copy / "valid" / "data-00000-of-00001.arrow"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    cmd = train_cmd(copy, tmp_path / "out", "--max-steps", "1")
    cmd[cmd.index("--verify") + 1] = "sha256"
    proc = run_train(cmd, check=False)
    assert proc.returncode == 2
    assert "valid/data-00000-of-00001.arrow: sha256 differs" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_truncation_keeps_eos(prepared):
    train = D.load_split(prepared, "train")
    rows = D.fetch_rows(train, [0, 1, 2], max_length=3)
    for row in rows:
        assert len(row["src_ids"]) <= 3 and row["src_ids"][-1] == 2 and row["trg_ids"][-1] == 2


def _lengths(n=203, seed=0):
    return np.random.default_rng(seed).integers(3, 60, size=(n, 2))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_fixed_pairs_partition_across_ranks(world):
    lengths = _lengths()
    samplers = [
        DistributedBatchSampler(lengths, batch_pairs=10, seed=3, rank=r, world_size=world) for r in range(world)
    ]
    plans = [s.epoch_batches(0) for s in samplers]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == (203 // 10) // world  # lockstep
    seen = np.concatenate([b for p in plans for b in p])
    assert len(seen) == len(set(seen.tolist()))  # no pair twice in an epoch
    assert all(len(b) == 10 for p in plans for b in p)


def test_plan_is_deterministic_and_changes_per_epoch():
    a = DistributedBatchSampler(_lengths(), batch_pairs=8, seed=1)
    b = DistributedBatchSampler(_lengths(), batch_pairs=8, seed=1)
    assert all((x == y).all() for x, y in zip(a.epoch_batches(0), b.epoch_batches(0)))
    assert not all((x == y).all() for x, y in zip(a.epoch_batches(0), a.epoch_batches(1)))


def test_token_budget_batches_fit_and_are_bucketed():
    lengths = _lengths(500)
    sampler = DistributedBatchSampler(lengths, batch_tokens=1200, bucket_batches=20, seed=0)
    batches = sampler.epoch_batches(0)
    cost = 2 * lengths.sum(axis=1)  # four views
    assert all(cost[b].sum() <= 1200 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))  # every pair once
    spread = np.mean([cost[b].max() - cost[b].min() for b in batches])
    random_spread = np.mean([np.ptp(cost[np.random.default_rng(i).choice(500, len(b))]) for i, b in enumerate(batches)])
    assert spread < random_spread / 3  # length bucketing groups similar lengths


def test_position_resumes_exactly_and_rolls_over_epochs():
    full = DistributedBatchSampler(_lengths(), batch_pairs=50, seed=5)
    stream = [full.next_batch() for _ in range(11)]  # 4 batches per epoch: crosses two epoch boundaries
    assert full.state.epoch == 2
    half = DistributedBatchSampler(_lengths(), batch_pairs=50, seed=5)
    for _ in range(6):
        half.next_batch()
    resumed = DistributedBatchSampler(_lengths(), batch_pairs=50, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))  # survives a JSON/pickle round trip
    assert all((x == y).all() for x, y in zip(stream[6:], [resumed.next_batch() for _ in range(5)]))


def test_sampler_refuses_a_different_seed_or_world():
    state = DistributedBatchSampler(_lengths(), batch_pairs=8, seed=5).state_dict()
    with pytest.raises(ValueError, match="seed"):
        DistributedBatchSampler(_lengths(), batch_pairs=8, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="world size"):
        DistributedBatchSampler(_lengths(), batch_pairs=8, seed=5, rank=0, world_size=2).load_state_dict(state)


def test_too_little_data_is_a_clear_error():
    sampler = DistributedBatchSampler(_lengths(5), batch_pairs=8)
    with pytest.raises(D.DataError, match="no batch"):
        sampler.next_batch()
