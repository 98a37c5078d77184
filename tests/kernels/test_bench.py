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


@pytest.mark.slow  # scripts/gpu_check.py --dry-run (in make test) runs both benchmarks in smoke mode
def test_smoke_runs_label_themselves_and_cover_every_method(capsys):
    from kernels.koleo import _use_triton

    if not _use_triton(torch.zeros(1)):
        pytest.skip("the smoke runs need the Triton interpreter (TRITON_INTERPRET=1 before import)")
    rows = bench_attn.main(["--smoke", "--data", "/nonexistent", "--tiles", "16x16x4"])
    methods = {row["method"] for row in rows}
    assert "block_diag_attention (triton)" in methods and "reference (PyTorch loop)" in methods
    assert "block_diag_attention (tiles 16x16x4)" in methods
    assert any(m.startswith("padded SDPA") for m in methods)
    rows = bench_koleo.main(["--smoke"])
    assert {row["B"] for row in rows} == {64, 130}
    out = capsys.readouterr().out
    assert out.count("NOT a performance figure") == 2
    assert "vs reference (PyTorch loop)" in out  # the speed-up summary names each baseline
    assert "note: varlen_attn: skipped on cpu float32 (CUDA fp16/bf16 only)" in out  # the first baseline, CUDA only


def test_bad_heads_flag_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        bench_attn.parse_args(["--heads", "16-64"])
    assert "--heads '16-64'" in capsys.readouterr().err


@pytest.mark.slow
def test_flex_baseline_masks_documents_like_the_reference():
    """The FlexAttention baseline computes the same attention (forward; Flex has no CPU backward)."""
    from kernels import block_diag_attention_ref

    lens = [5, 17, 40, 2, 64]
    q, k, v, _, cu = bench_attn._packed_inputs(lens, 2, 16, torch.float32, "cpu")
    fn, inputs = bench_attn.method_flex(q, k, v, cu, lens)
    out = fn(*inputs)[0].transpose(0, 1)  # (1, H, T, D) -> (T, H, D)
    torch.testing.assert_close(out, block_diag_attention_ref(q, k, v, cu), atol=1e-5, rtol=1e-5)


def test_padded_sdpa_baseline_matches_the_reference():
    from torch.nn.attention import SDPBackend

    from kernels import block_diag_attention_ref

    lens = [5, 17, 1, 30]
    q, k, v, _, cu = bench_attn._packed_inputs(lens, 2, 16, torch.float32, "cpu")
    fn, inputs = bench_attn.method_sdpa_padded(q, k, v, cu, lens, SDPBackend.MATH)
    out = fn(*inputs).transpose(1, 2)  # (S, L_pad, H, D), L_pad = 32: max length 30 rounded up to 16s
    valid = torch.arange(out.shape[1])[None, :] < torch.tensor(lens)[:, None]
    torch.testing.assert_close(out[valid], block_diag_attention_ref(q, k, v, cu), atol=1e-5, rtol=1e-5)


def test_flex_is_compiled_once_per_head_shape_and_the_mask_once_per_batch(monkeypatch):
    """A grid of head shapes over one batch compiles flex_attention once per head shape and builds one BlockMask
    (torch.compile stubbed: the eager functions run, the calls are counted)."""
    from kernels import block_diag_attention_ref

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn.__name__) or fn)
    monkeypatch.setattr(bench_attn, "_FLEX", {})
    monkeypatch.setattr(bench_attn, "_MASKS", {})
    lens = [5, 17, 2, 40]
    for n_heads, head_dim in ((2, 16), (1, 32), (2, 16)):
        q, k, v, _, cu = bench_attn._packed_inputs(lens, n_heads, head_dim, torch.float32, "cpu")
        fn, inputs = bench_attn.method_flex(q, k, v, cu, lens)
        out = fn(*inputs)[0].transpose(0, 1)  # (1, H, T, D) -> (T, H, D)
        torch.testing.assert_close(out, block_diag_attention_ref(q, k, v, cu), atol=1e-5, rtol=1e-5)
    ours = sorted(n for n in compiled if n in ("create_block_mask", "flex_attention"))  # torch compiles helpers too
    assert ours == ["create_block_mask", "flex_attention", "flex_attention"]


def test_csv_holds_every_finished_row_while_the_run_goes_on(tmp_path, monkeypatch):
    """bench_config hands each row over as soon as it is measured, so a run killed at a time limit leaves them."""
    from kernels.bench.common import write_csv

    seen = []
    monkeypatch.setattr(bench_attn, "measure", lambda *a: (1.0, 2.0, 3.0, 4.0))
    opts = type("Opts", (), {"smoke": True, "skip_reference": False, "tiles": [], "notes": []})()
    path = tmp_path / "rows.csv"

    def on_row(row):
        seen.append(row)
        write_csv(path, seen, {"device": "cpu"}, quiet=True)
        assert path.read_text().count("\n") == len(seen) + 1  # header + the rows so far

    rows = bench_attn.bench_config("l", [3, 5], 2, 16, torch.float32, "cpu", opts, on_row)
    assert rows == seen and len(rows) >= 3
