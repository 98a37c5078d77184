"""The benchmark scripts stay runnable: length models, packing, the prepared-data reader and a CPU smoke run."""

import numpy as np
import pytest
import torch

from kernels.bench import bench_block_diag_attention as bench_attn
from kernels.bench import bench_koleo


def test_lognormal_lengths_have_mean_40_and_stay_in_range():
    lens = bench_attn.lognormal_lengths(np.random.default_rng(0), n=50_000)
    assert lens.min() >= 2 and lens.max() <= 200
    assert abs(lens.mean() - 40) < 1.5


@pytest.mark.parametrize("n_tokens", [1, 199, 8192])
def test_pack_fills_the_token_budget_exactly(n_tokens):
    pool = np.array([1, 7, 40, 200])
    lens = bench_attn.pack(pool, n_tokens, np.random.default_rng(1))
    assert sum(lens) == n_tokens and min(lens) >= 1


def test_prepared_lengths_read_both_sides(tmp_path):
    import datasets

    rows = {"src_ids": [[0, 5, 2], [0, 2]], "trg_ids": [[0, 6, 7, 8, 2], [0, 9, 2]], "src_lang": ["eng_Latn"] * 2,
            "trg_lang": ["fra_Latn"] * 2}  # fmt: skip
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "train"))
    assert sorted(bench_attn.prepared_lengths(tmp_path).tolist()) == [2, 3, 3, 5]


def test_without_cuda_the_scripts_exit_zero(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for module in (bench_attn, bench_koleo):
        with pytest.raises(SystemExit) as exit_info:
            module.main([])
        assert exit_info.value.code == 0
        assert "no CUDA device, nothing measured" in capsys.readouterr().out


def test_smoke_runs_label_themselves_and_cover_every_method(capsys):
    from kernels.koleo import _use_triton

    if not _use_triton(torch.zeros(1)):
        pytest.skip("the smoke runs need the Triton interpreter (TRITON_INTERPRET=1 before import)")
    rows = bench_attn.main(["--smoke", "--data", "/nonexistent"])
    methods = {row["method"] for row in rows}
    assert "block_diag_attention (triton)" in methods and "reference (PyTorch loop)" in methods
    assert any(m.startswith("padded SDPA") for m in methods)
    rows = bench_koleo.main(["--smoke"])
    assert {row["B"] for row in rows} == {64, 130}
    assert capsys.readouterr().out.count("NOT a performance figure") == 2
