"""pipeline/data/sampler.py: the lazy global plan (Feistel order, token-budget blocks), language-pair sampling with a
temperature, exact resume, the same rows per optimizer step whatever the world size, and memory that does not grow
with the corpus. The shared sampling files (data_prep/lengths.py) and the flags' errors are tested here as well."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc

import numpy as np
import pytest

from data_prep import lengths as L
from pipeline.config.schema import ConfigError
from pipeline.data import dataset as D
from pipeline.data.sampler import (
    DistributedBatchSampler,
    FeistelPermutation,
    PairTable,
    pair_probabilities,
    sampling_probabilities,
)

COUNTS = np.array([6000, 1500, 300, 40])  # rows per pair: a 150x spread, like high- vs low-resource pairs


def _pairs(counts=COUNTS) -> PairTable:
    """Rows of pair p are interleaved in the corpus (not contiguous): the index groups them."""
    codes = np.repeat(np.arange(len(counts)), counts)
    codes = codes[np.random.default_rng(0).permutation(len(codes))].astype(np.uint16)
    index = np.argsort(codes, kind="stable").astype(np.uint32)
    return PairTable([f"l{i}-eng" for i in range(len(counts))], np.asarray(counts), index, codes)


def _lengths(n, seed=0):
    return np.random.default_rng(seed).integers(3, 60, size=(n, 2)).astype(np.uint16)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_is_a_bijection_and_depends_on_the_key(n):
    perm = FeistelPermutation(n, (1, 2))(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))
    if n > 7:
        assert (perm != FeistelPermutation(n, (1, 3))(np.arange(n))).any()
        assert (perm != np.arange(n)).mean() > 0.9


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("mode", ["pairs", "tokens"])
def test_empirical_pair_shares_match_the_target(alpha, mode):
    """20k sampled rows: each pair's share within 4 standard errors (sqrt(p (1 - p) / n) <= 0.0035) of
    n_p^alpha / sum n^alpha. alpha 0: uniform over pairs; 1: proportional to rows."""
    pairs = _pairs()
    probs = pair_probabilities(pairs.counts, alpha)
    expected = COUNTS**alpha / (COUNTS**alpha).sum()
    np.testing.assert_allclose(probs, expected)
    size = dict(batch_pairs=50) if mode == "pairs" else dict(batch_tokens=4000, bucket_batches=10)
    sampler = DistributedBatchSampler(
        _lengths(COUNTS.sum()), **size, seed=4, pairs=pairs, probs=probs, epoch_pairs=20000
    )
    rows = np.concatenate([sampler.next_batch() for _ in range(len(sampler))])
    share = np.bincount(pairs.codes[rows], minlength=len(COUNTS)) / len(rows)
    se = np.sqrt(expected * (1 - expected) / len(rows))
    assert len(rows) > 15000 and (np.abs(share - expected) <= 4 * se + 1e-9).all(), (share, expected)
    counts = sampler.pair_counts()
    assert sum(counts.values()) == len(rows)
    np.testing.assert_array_equal([counts[n] for n in pairs.names], np.bincount(pairs.codes[rows]))


def test_a_pair_is_drawn_without_replacement_until_exhausted_then_reshuffled():
    pairs = _pairs(np.array([5000, 40]))
    probs = np.array([0.5, 0.5])
    sampler = DistributedBatchSampler(_lengths(5040), batch_pairs=10, seed=1, pairs=pairs, probs=probs)
    rows = np.concatenate([sampler.next_batch() for _ in range(40)])
    small = [r for r in rows.tolist() if pairs.codes[r] == 1]
    assert len(small) >= 120
    first, second = small[:40], small[40:80]
    assert sorted(first) == sorted(second) == sorted(np.flatnonzero(pairs.codes == 1).tolist())  # every row once
    assert first != second  # then a new permutation


def test_proportional_order_reads_every_row_once_per_epoch():
    sampler = DistributedBatchSampler(_lengths(1003), batch_pairs=10, seed=2, pairs=_pairs(np.array([1003])))
    rows = np.concatenate(sampler.epoch_batches(0))
    assert len(rows) == 1000 and len(set(rows.tolist())) == 1000


def _sampler(world=1, rank=0, gas=1, mode="pairs", sampled=True):
    size = dict(batch_pairs=16) if mode == "pairs" else dict(batch_tokens=2000, bucket_batches=4)
    pairs = _pairs()
    probs = pair_probabilities(pairs.counts, 0.3) if sampled else None
    return DistributedBatchSampler(
        _lengths(COUNTS.sum()),
        **size,
        seed=9,
        rank=rank,
        world_size=world,
        grad_accum=gas,
        pairs=pairs,
        probs=probs,
        epoch_pairs=1000,
        max_length=40,
    )


def _steps(samplers, n_steps):
    """Rows of each optimizer step, all ranks: sorted, so that steps compare as sets of rows."""
    out = []
    for _ in range(n_steps):
        rows = [s.next_batch() for s in samplers for _ in range(samplers[0].gas)]
        out.append(np.sort(np.concatenate(rows)))
    return out


@pytest.mark.parametrize("mode", ["pairs", "tokens"])
@pytest.mark.parametrize("sampled", [True, False])
def test_same_rows_per_step_whatever_the_world_size_and_across_a_change(mode, sampled):
    """2 ranks x gas 1 and 1 rank x gas 2 (G = 2 micro batches per step) read the same rows at every step, also
    when a run moves 2 -> 1 -> 2 ranks through state_dict (mid-epoch) and across the epoch boundary."""
    n = 3 * len(_sampler(mode=mode, sampled=sampled)) // 2 + 3  # crosses an epoch boundary
    ref = _steps([_sampler(2, r, 1, mode, sampled) for r in range(2)], n)
    one = _steps([_sampler(1, 0, 2, mode, sampled)], n)
    assert all((a == b).all() for a, b in zip(ref, one))
    two = [_sampler(2, r, 1, mode, sampled) for r in range(2)]
    got = _steps(two, 5)
    state = json.loads(json.dumps(two[0].state_dict()))
    single = _sampler(1, 0, 2, mode, sampled)
    single.load_state_dict(state)
    got += _steps([single], 7)
    again = [_sampler(2, r, 1, mode, sampled) for r in range(2)]
    for s in again:
        s.load_state_dict(json.loads(json.dumps(single.state_dict())))
    got += _steps(again, n - 12)
    assert all((a == b).all() for a, b in zip(ref, got))


@pytest.mark.parametrize("mode", ["pairs", "tokens"])
def test_resume_mid_step_and_mid_epoch_gives_identical_batches(mode):
    full = _sampler(2, 1, 3, mode)
    stream = [full.next_batch() for _ in range(3 * len(full) // 2)]
    half = _sampler(2, 1, 3, mode)
    for _ in range(len(stream) // 2 + 1):  # +1: mid-step (gas 3)
        half.next_batch()
    resumed = _sampler(2, 1, 3, mode)
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))
    rest = [resumed.next_batch() for _ in range(len(stream) - len(stream) // 2 - 1)]
    assert all((a == b).all() for a, b in zip(stream[len(stream) // 2 + 1 :], rest))
    assert resumed.state.epoch == full.state.epoch == 1


def test_pair_counts_follow_the_state_not_the_batches_made_ahead():
    """A prefetch thread draws batches ahead and rewinds through load_state_dict: the counts rewind with it."""
    s = _sampler(2, 0, 2)
    for _ in range(3):  # 1.5 steps: 2 global steps begun (4 micro batches of 16 rows each)
        s.next_batch()
    consumed = s.state_dict()
    assert sum(s.pair_counts(consumed).values()) == 2 * 4 * 16
    for _ in range(4):
        s.next_batch()
    s.load_state_dict(consumed)
    assert s.pair_counts() == s.pair_counts(consumed)
    s.next_batch()  # the rest of the step begun: not counted twice
    assert sum(s.pair_counts().values()) == 2 * 4 * 16


def test_a_mid_step_state_cannot_move_to_another_world_size():
    s = _sampler(2, 0, 2)
    s.next_batch()
    with pytest.raises(ValueError, match="world size"):
        _sampler(1, 0, 4).load_state_dict(s.state_dict())


def test_masking_seed_is_keyed_by_the_global_micro_batch():
    two = [_sampler(2, r, 1) for r in range(2)]
    one = _sampler(1, 0, 2)
    seeds_two, seeds_one = [], []
    for _ in range(4):
        for s in two:
            s.next_batch()
            seeds_two.append(s.batch_seed())
        one.next_batch()
        seeds_one.append(one.batch_seed())
        one.next_batch()
        seeds_one.append(one.batch_seed())
    assert seeds_two == seeds_one and len(set(seeds_one)) == 8


@pytest.mark.parametrize("mode", ["pairs", "tokens"])
def test_a_billion_pairs_need_no_per_pair_memory(mode):
    """10^9 lengths as a zero-copy broadcast view: the sampler allocates kilobytes, not gigabytes, and starts fast."""
    lengths = np.broadcast_to(np.array([[20, 25]], dtype=np.uint16), (10**9, 2))
    size = dict(batch_pairs=150) if mode == "pairs" else dict(batch_tokens=20000, bucket_batches=100)
    tracemalloc.start()
    t0 = time.perf_counter()
    sampler = DistributedBatchSampler(lengths, **size, seed=0, rank=3, world_size=8, grad_accum=2)
    batches = [sampler.next_batch() for _ in range(3)]
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert all(len(b) and b.max() < 10**9 for b in batches)
    assert peak < 64 * 2**20 and elapsed < 10, (peak, elapsed)  # 24 GB per rank with the eager plan


def test_bad_sampling_values_name_the_flag(tmp_path):
    pairs = _pairs()
    with pytest.raises(ConfigError, match="--lang-alpha"):
        sampling_probabilities(-0.5, "", pairs)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"xx-eng": 1.0}))
    with pytest.raises(ConfigError, match=r"--lang-weights .*'xx-eng' is not in the training data"):
        sampling_probabilities(0.3, str(weights), pairs)
    weights.write_text(json.dumps({name: 0 for name in pairs.names}))
    with pytest.raises(ConfigError, match="--lang-weights .*sum to zero"):
        sampling_probabilities(0.3, str(weights), pairs)
    weights.write_text(json.dumps({"l0-eng": -1}))
    with pytest.raises(ConfigError, match="--lang-weights .*>= 0"):
        sampling_probabilities(0.3, str(weights), pairs)


def test_weights_file_overrides_the_alpha_shares(tmp_path):
    pairs = _pairs()
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"l3-eng": 1.0}))  # replaces its alpha share (the shares sum to 1), renormalised
    probs = sampling_probabilities(0.3, str(weights), pairs)
    base = pair_probabilities(pairs.counts, 0.3)
    others = 1.0 - base[3]
    np.testing.assert_allclose(probs, np.append(base[:3], 1.0) / (others + 1.0))
    assert sampling_probabilities(1.0, "", pairs) is None  # proportional: the plain permutation


# -- shared sampling files ---------------------------------------------------------------------------------------


def test_sampling_files_match_the_split_and_are_rebuilt_when_stale(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    manifest = D.load_manifest(data)
    tables = D.sampling_tables(data, "train", manifest)  # built on first use
    train = D.load_split(data, "train", manifest)
    np.testing.assert_array_equal(np.asarray(tables["lengths"]), D.pair_lengths(train, 65535))
    assert isinstance(tables["lengths"], np.memmap) and tables["lengths"].dtype == np.uint16
    assert tables["pairs"] == ["fra_Latn-eng_Latn"] and tables["counts"].tolist() == [len(train)]
    assert sorted(np.asarray(tables["pair_index"]).tolist()) == list(range(len(train)))
    meta = json.loads(L.meta_path(data, "train").read_text())
    meta["rows"] += 1  # a stale record (another prep of the split): rebuilt, not trusted
    L.meta_path(data, "train").write_text(json.dumps(meta))
    again = D.sampling_tables(data, "train", manifest)
    assert json.loads(L.meta_path(data, "train").read_text())["rows"] == len(train) == len(again["lengths"])


def test_a_corrupted_sampling_file_is_detected_with_sha256(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    L.write_sampling_files(data, "train")
    path = L.sampling_dir(data) / "train_lengths.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    rows = json.loads(L.meta_path(data, "train").read_text())["rows"]
    with pytest.raises(L.LengthsError, match="sha256"):
        L.open_sampling_files(data, "train", rows, verify="sha256")


def test_data_prep_writes_the_sampling_files(tmp_path):
    from data_prep.__main__ import main
    from tests.data_prep.helpers import sentence_pairs, write_tsv

    corpus = write_tsv(tmp_path / "a.tsv", sentence_pairs(80), langs=None)
    out = tmp_path / "prep"
    argv = ["--source", f"tsv:{corpus}", "--out", str(out), "--train-tokenizer", "200", "--workers", "1", "-q"]
    assert main(argv + ["--src-lang", "fra_Latn", "--trg-lang", "eng_Latn"]) == 0
    manifest = D.load_manifest(out)
    rows = sum(s["rows"] for s in manifest["shards"] if s["split"] == "train")
    tables = L.open_sampling_files(out, "train", rows, verify="sha256")  # written by the prep, not on first use
    assert tables["pairs"] == ["fra_Latn-eng_Latn"] and len(tables["lengths"]) == rows > 0


def _multi_pair_copy(prepared, root):
    """`prepared` with its train rows spread over three language pairs (200 / 40 / 16 rows), manifest updated."""
    import datasets

    from tests.pipeline.conftest import _sha256

    data = root / "multi"
    shutil.copytree(prepared, data, ignore=shutil.ignore_patterns("train", "sampling"))
    train = datasets.load_from_disk(str(prepared / "train"))
    langs = ["deu_Latn"] * 200 + ["swh_Latn"] * 40 + ["zul_Latn"] * 16
    train.remove_columns("src_lang").add_column("src_lang", langs).save_to_disk(str(data / "train"), num_shards=1)
    manifest = json.loads((prepared / "manifest.json").read_text())
    shards = [s for s in manifest["shards"] if s["split"] != "train"]
    for path in sorted((data / "train").glob("*.arrow")):
        rows = len(datasets.Dataset.from_file(str(path)))
        shards.append({"split": "train", "file": f"train/{path.name}", "rows": rows, "sha256": _sha256(path)})
    manifest["shards"] = shards
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def test_training_with_lang_alpha_logs_the_shares_and_counts(prepared, tmp_path):
    from pipeline.training.metrics import read_metrics
    from tests.pipeline.conftest import run_train, train_cmd

    data = _multi_pair_copy(prepared, tmp_path)
    out = tmp_path / "run"
    cmd = train_cmd(data, out, "--max-steps", "3", "--lang-alpha", "0.3", "--valid-every", "-1", "--log-every", "3")
    proc = run_train(cmd)
    expected = np.array([200, 40, 16]) ** 0.3 / (np.array([200, 40, 16]) ** 0.3).sum()
    assert f"deu_Latn-eng_Latn {100 * expected[0]:.2f}%" in proc.stderr  # the start-up log line
    assert "sampling 3 language pairs (alpha 0.3" in proc.stderr
    last = read_metrics(out, "train")[-1]
    assert sum(last["pair_counts"].values()) == 3 * 8  # rows of the 3 steps since the start
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"deu_Latn-eng_Latn": 1, "fra_Latn-eng_Latn": 2}))
    bad = run_train(train_cmd(data, tmp_path / "bad", "--max-steps", "1", "--lang-weights", str(weights)), check=False)
    assert bad.returncode == 2 and "--lang-weights" in bad.stderr and "fra_Latn-eng_Latn" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists() or not any((tmp_path / "bad" / "checkpoints").iterdir())


def test_bench_sampler_prints_a_row_per_size_and_mode(tmp_path, capsys):
    from pipeline.bench_sampler import main

    assert main(["--pairs", "2e4", "3e4", "--virtual-above", "2e4", "--batches", "3", "--dir", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "e+04" in line]
    assert len(rows) == 6 and sum("(virtual)" in r for r in rows) == 3  # 3e4 above --virtual-above
    assert (tmp_path / "20000" / "lengths.npy").is_file() and not (tmp_path / "30000").exists()
