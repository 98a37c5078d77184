"""MexmaModel pieces: ModelConfig checks, presets, forward contract, chunked CE, KoLeo edge cases, attention paths,
activation checkpointing, encoder export, and a smoke run of the step benchmark."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import XLMRobertaModel

from kernels import block_diag_attention_ref
from pipeline import bench_step
from pipeline.data.collate import IGNORE_INDEX, MexmaCollator
from pipeline.model import losses
from pipeline.model.attention import padded_sdpa
from pipeline.model.mexma import PRESETS, ModelConfig, build_model, encoder_config
from tests.pipeline.test_collate import make_rows
from tests.pipeline.test_equivalence import SPECIAL, V, small_config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("head_layers", 0),
        ("head_heads", -1),
        ("num_layers", 0),
        ("attention_dropout", 1.0),
        ("head_dropout", -0.1),
        ("koleo_weight", float("nan")),
        ("mlm_weight", -1.0),
        ("attention", "flash"),
        ("head_init", "xavier"),
        ("ce_chunk_bytes", -1),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**{field: value}).validate()


def test_config_dict_round_trip_and_unknown_field():
    cfg = small_config(koleo_global=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="ModelConfig.hidden_size only applies to presets"):
        ModelConfig(model="/some/dir", hidden_size=64).validate()
    for f in dataclasses.fields(ModelConfig):  # every field has a default (the trainer's config embeds this one)
        assert f.default is not dataclasses.MISSING


def test_presets_have_their_shapes():
    expected = {"tiny": (4, 256, 4, 1024), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
    assert set(PRESETS) == set(expected)
    for name, shape in expected.items():
        c = encoder_config(ModelConfig(model=name), 250002)
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == shape
        assert (c.pad_token_id, c.max_position_embeddings, c.attention_probs_dropout_prob) == (1, 514, 0.0)


def test_default_head_follows_the_reference():
    model = build_model(ModelConfig(num_layers=1), 300)
    head = model.head.config
    assert (head.num_hidden_layers, head.num_attention_heads, head.intermediate_size) == (6, 8, 3072)
    assert (head.hidden_size, head.hidden_dropout_prob, head.attention_probs_dropout_prob) == (256, 0.1, 0.0)
    assert model.encoder.pooler is None
    names = dict(model.named_parameters())
    assert "encoder.embeddings.word_embeddings.weight" in names and "vocab_bias" in names
    assert not any("decoder" in n or "lm_head" in n for n in names)  # tied: no second (V, H) matrix


def test_forward_contract_and_backward():
    model = build_model(small_config(hidden_dropout=0.1, head_dropout=0.1), V)
    batch = MexmaCollator(SPECIAL, V)(make_rows(5, vocab=V))
    out = model(**batch, n_tokens=123)  # extra bookkeeping keys are ignored
    for key in ("loss", "mlm_loss", "cls_loss", "koleo_loss"):
        assert out[key].dtype == torch.float32 and out[key].ndim == 0 and torch.isfinite(out[key])
    assert out["src_cls"].shape == out["trg_cls"].shape == (5, 64)
    assert out["n_masked"] == int((batch["labels"] != IGNORE_INDEX).sum())
    expected = out["mlm_loss"] + out["cls_loss"] + 0.5 * out["koleo_loss"]
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["mlm_loss"], (out["src_mlm_loss"] + out["trg_mlm_loss"]) / 2)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="4 \\* n_pairs \\+ 1"):
        model(**{**batch, "n_pairs": 4})


def test_encoder_direct_padded_call_is_a_clear_error():
    model = build_model(small_config(), V)
    with pytest.raises(ValueError, match="needs cu_seqlens"):
        model.encoder(input_ids=torch.tensor([[0, 5, 2]]))


@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_linear_cross_entropy_matches_full_logits(rows):
    h = torch.randn(11, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    y = torch.randint(0, 40, (11,))
    tw = torch.rand(11)
    loss, ce = losses.linear_cross_entropy(h, w, b, y, tw, rows)
    ref_ce = F.cross_entropy(h @ w.t() + b, y, reduction="none")
    ref = (ref_ce * tw).sum()
    torch.testing.assert_close(ce, ref_ce.detach())
    torch.testing.assert_close(loss, ref)
    grads = torch.autograd.grad(2.5 * loss, (h, w, b))
    ref_grads = torch.autograd.grad(2.5 * ref, (h, w, b))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(losses.linear_cross_entropy(h, w, b, y, tw, rows)[0], ref.detach())
    empty, _ = losses.linear_cross_entropy(h[:0], w, b, y[:0], tw[:0])
    assert empty.item() == 0.0 and empty.requires_grad


def test_chunk_rows_budget():
    assert losses.chunk_rows(250002, 256 * 2**20) == 268  # 268 x 250002 x 4 B <= 256 MiB
    assert losses.chunk_rows(10**9, 1) == 1


def test_chunk_budget_follows_the_device(monkeypatch):
    """By default a logits block is 1/64 of the GPU's memory (>= 1 GiB on an 80 GB card), 256 MiB on CPUs."""
    gib = 2**30
    assert losses.device_chunk_bytes("cpu") == 256 * 2**20
    for total, want in ((80e9, 80e9 // 64), (16e9, 256 * 2**20), (1e12, 4 * gib)):
        props = SimpleNamespace(total_memory=int(total))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=props: p)
        assert losses.device_chunk_bytes("cuda:0") == int(want)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=int(80e9)))
    budget = losses.device_chunk_bytes("cuda:0")
    assert budget >= gib and losses.chunk_rows(losses.padded_vocab(250002), budget) == 1249  # 268 at 256 MiB off CUDA


def test_vocabulary_gemms_are_padded_to_128_and_the_gradients_keep_the_real_size(monkeypatch):
    """Every GEMM of the cross-entropy sees V_pad = 250112 for V = 250002 (shapes recorded); the extra logits are
    -inf, so loss and gradients equal the unpadded computation's and have the parameters' shapes."""
    assert losses.padded_vocab(250002) == 250112 and losses.padded_vocab(256) == 256
    h = torch.randn(9, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)  # V = 300 -> 384
    b = torch.randn(300, requires_grad=True)
    y, tw = torch.randint(0, 300, (9,)), torch.rand(9)
    loss, ce = losses.linear_cross_entropy(h, w, b, y, tw, 4)
    ref_ce = F.cross_entropy(h @ w.t() + b, y, reduction="none")
    torch.testing.assert_close(ce, ref_ce.detach())
    grads = torch.autograd.grad(loss, (h, w, b))
    assert [tuple(g.shape) for g in grads] == [(9, 16), (300, 16), (300,)]
    for g, r in zip(grads, torch.autograd.grad((ref_ce * tw).sum(), (h, w, b))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    w_pad, b_pad = losses._padded_operands(w, b, torch.float32)
    assert w_pad.shape == (384, 16) and not w_pad[300:].any() and torch.isinf(b_pad[300:]).all()


def test_fp16_is_refused_with_the_reason():
    h, w, b = torch.randn(3, 8).half(), torch.randn(20, 8).half(), torch.randn(20).half()
    with pytest.raises(ValueError, match="fp16 GEMMs would flush its gradients"):
        losses.linear_cross_entropy(h, w, b, torch.tensor([1, 2, 3]), torch.ones(3), 2)


def test_koleo_edge_cases():
    x = torch.randn(1, 8, requires_grad=True)
    zero = losses.koleo(x)
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    y = torch.randn(6, 8)
    assert losses.gather_for_koleo(y, global_batch=True) is y  # no process group: the local batch
    torch.testing.assert_close(losses.koleo(y, use_kernel=False), losses.koleo(y, use_kernel=True))


def test_padded_sdpa_matches_reference_with_odd_lengths():
    lens = torch.tensor([1, 7, 41, 2, 1])
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    q, k, v = (torch.randn(int(cu[-1]), 3, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = padded_sdpa(q, k, v, cu, 0.25)
    ref = block_diag_attention_ref(q, k, v, cu, softmax_scale=0.25)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_gradient_checkpointing_recomputes_layers():
    batch = MexmaCollator(SPECIAL, V)(make_rows(3, vocab=V))
    counts = {}
    grads = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(small_config(gradient_checkpointing=ckpt), V)
        calls = []
        for layer in (model.encoder.encoder.layer[0], model.head.layer[0]):
            layer.intermediate.register_forward_hook(lambda *_, c=calls: c.append(1))
        model(**batch)["loss"].backward()
        counts[ckpt] = len(calls)
        grads[ckpt] = [p.grad for p in model.parameters()]
    assert counts == {False: 2, True: 4}  # each checkpointed layer runs again in backward
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b)


def test_exported_encoder_gives_the_same_cls(tmp_path):
    model = build_model(small_config(), V).eval()
    batch = MexmaCollator(SPECIAL, V)(make_rows(3, vocab=V))
    with torch.no_grad():
        cls = model(**batch)["src_cls"]
    model.encoder.save_pretrained(tmp_path)
    loaded = XLMRobertaModel.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation != "mexma_block_diag"  # the export runs without our package
    cu = batch["cu_seqlens"].tolist()
    for i in range(3):
        ids = batch["input_ids"][cu[6 + i] : cu[7 + i]][None]  # clean src view i
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state[0, 0], cls[i], rtol=1e-5, atol=1e-5)
    again = build_model(
        small_config(model=str(tmp_path), num_layers=None, hidden_size=None, num_heads=None, ffn_size=None), V
    ).eval()  # continue from real weights
    with torch.no_grad():
        torch.testing.assert_close(again(**batch)["src_cls"], cls, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(model=str(tmp_path)), V + 1)


def test_bench_step_runs_both_variants():
    args = bench_step.parse_args(
        ["--pairs", "3", "--vocab", "200", "--warmup", "0", "--steps", "1", "--batches", "1", "--threads", "1"]
    )
    batches = bench_step.make_batches(args)
    assert bench_step.step_flops(batches[0], ModelConfig(), 200) > 0
    for variant in ("packed", "padded"):
        result = bench_step.run_variant(variant, args, batches)
        assert len(result["times"]) == 1 and result["times"][0] > 0 and isinstance(result["peak_bytes"], int)
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--variants", "packed,nope"])


def test_linear_cross_entropy_bf16_weights_and_autocast():
    h, w, b = torch.randn(37, 32), torch.randn(300, 32), torch.randn(300)
    y, tw = torch.randint(0, 300, (37,)), torch.full((37,), 1 / 37)
    ref_inputs = [t.clone().requires_grad_() for t in (h, w, b)]
    F.cross_entropy(ref_inputs[0] @ ref_inputs[1].t() + ref_inputs[2], y).backward()
    bf16 = [t.bfloat16().requires_grad_() for t in (h, w, b)]
    losses.linear_cross_entropy(*bf16, y, tw, 8)[0].backward()
    amp = [t.clone().requires_grad_() for t in (h, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = losses.linear_cross_entropy(*amp, y, tw, 8)
    assert loss.dtype == torch.float32
    loss.backward()
    for got in (bf16, amp):
        for g, r in zip(got, ref_inputs):
            assert g.grad.dtype == g.dtype
            assert (g.grad.float() - r.grad).abs().max() <= 3e-2 * r.grad.abs().max()


def _koleo_rank(rank, world, init_file, result_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(rank)).requires_grad_()
        gathered = losses.gather_for_koleo(x, global_batch=True)
        loss = losses.koleo(gathered, use_kernel=False)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": x.grad, "rows": gathered.shape[0]}, f"{result_file}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch + transformers: ~10 s idle, a minute on a loaded CI box
def test_koleo_global_batch_over_two_ranks(tmp_path):
    """Each rank gets the KoLeo of all 2 x 3 rows; its gradient is world x that of the global loss."""
    world = 2
    torch.multiprocessing.spawn(_koleo_rank, args=(world, tmp_path / "init", tmp_path / "out"), nprocs=world)
    xs = torch.cat([torch.randn(3, 8, generator=torch.Generator().manual_seed(r)) for r in range(world)])
    xs.requires_grad_()
    ref = losses.koleo(xs, use_kernel=False)
    ref.backward()
    for rank in range(world):
        got = torch.load(tmp_path / f"out.{rank}")
        assert got["rows"] == 6
        torch.testing.assert_close(got["loss"], ref.detach())
        torch.testing.assert_close(got["grad"], world * xs.grad[3 * rank : 3 * rank + 3])


def test_bench_step_original_shapes():
    """--shapes original: vocabulary 8000 and a 2-layer 4-head head with FFN 3072; both report."""
    args = bench_step.parse_args(
        ["--pairs", "2", "--warmup", "0", "--steps", "1", "--batches", "1", "--threads", "1", "--shapes", "both"]
    )
    original = bench_step.shape_args(args, "original")
    cfg = bench_step.model_config(original)
    assert (original.vocab, cfg.head_layers, cfg.head_heads, cfg.head_ffn) == (8000, 2, 4, 3072)
    assert bench_step.model_config(bench_step.shape_args(args, "default")).head_layers == 6
    batches = bench_step.make_batches(original)
    assert int(max(b["input_ids"].max() for b in batches)) < 8000
    result = bench_step.run_variant("packed", original, batches)
    summary = bench_step.summarize(original, {"packed": [result]}, batches)
    assert summary["config"]["shape"] == "original" and summary["variants"]["packed"]["mfu"] is None  # CPU
