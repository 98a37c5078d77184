"""Encoders: char3gram, length-sorted HF batching, pooling, model resolution."""

import shutil

import numpy as np
import pytest

from eval.char3gram import Char3gramEncoder, gram_buckets
from eval.encode import HFEncoder, ModelError, STEncoder, export_if_needed, length_batches, load_encoder


def test_char3gram_is_deterministic_and_normalises_text():
    sentences = ["Hello  World", "hello world", "something else entirely", "x"]
    v = Char3gramEncoder(dim=256).encode(sentences)
    assert v.shape == (4, 256) and v.dtype == np.float32
    np.testing.assert_array_equal(v[0], v[1])  # case and whitespace do not matter
    np.testing.assert_array_equal(v, Char3gramEncoder(dim=256).encode(sentences))  # a fresh instance
    rows, _ = gram_buckets(["abcd", "x"])
    assert rows.tolist() == [0, 0, 0, 0, 1]  # " abcd " has 4 3-grams, " x " one
    cos = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    assert cos[0, 2] < 0.5


def test_char3gram_similar_strings_are_closer():
    v = Char3gramEncoder().encode(["the green house", "the green houses", "a blue river"])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > 0.7 > v[0] @ v[2]


def test_length_batches_respect_budget():
    lengths = [5, 30, 7, 30, 2, 12]
    batches = length_batches(lengths, batch_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1, 3]  # longest first, ties by index
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 60
    assert length_batches([100], batch_tokens=10) == [[0]]  # an over-long sentence still gets a batch


def test_hf_encoder_batching_does_not_change_embeddings(tiny_model):
    sentences = ["the cat sees the dog 1", "a red car 2", "the old teacher reads a book in the morning 3"]
    batched = HFEncoder(str(tiny_model), batch_tokens=10_000).encode(sentences)
    single = HFEncoder(str(tiny_model), batch_tokens=1).encode(sentences)  # one sentence per batch
    np.testing.assert_allclose(batched, single, atol=1e-5)
    mean = HFEncoder(str(tiny_model), pooling="mean").encode(sentences)
    assert batched.shape == mean.shape == (3, 32) and not np.allclose(batched, mean)


def test_model_resolution_errors(tmp_path):
    assert isinstance(load_encoder("char3gram"), Char3gramEncoder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        export_if_needed(str(tmp_path / "file"), str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match=f"--model {broken}: cannot load"):
        HFEncoder(str(broken))
    with pytest.raises(ModelError, match="--pooling"):
        HFEncoder(str(broken), pooling="max")


def test_sentence_transformers_stack_matches_cls(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    with pytest.raises(ModelError, match="needs a modules.json"):
        STEncoder(str(tiny_model))
    st_dir = tmp_path / "st"
    shutil.copytree(tiny_model, st_dir)
    modules = [Transformer(str(st_dir), max_seq_length=64), Pooling(32, pooling_mode="cls")]
    SentenceTransformer(modules=modules, device="cpu").save(str(st_dir))
    sentences = ["the cat sees the dog 1", "a red car 2", "the old teacher reads a book 3"]
    st = load_encoder(str(st_dir), pooling="sentence-transformers").encode(sentences)
    np.testing.assert_allclose(st, HFEncoder(str(st_dir)).encode(sentences), atol=1e-5)


def test_cls_pooling_runs_the_last_layer_at_the_cls_rows_only_with_the_same_embeddings(tiny_model):
    """CLS pooling on an XLM-R directory runs the last layer at the <s> rows (CLSLastLayer), as the evaluation inside
    training does: same embeddings as the whole model's last_hidden_state[:, 0], padded batches included."""
    import torch
    from transformers import AutoModel

    sentences = ["the cat sees the dog 1", "a red car 2", "the old teacher reads a book in the morning 3", "x"]
    enc = HFEncoder(str(tiny_model), batch_tokens=10_000)  # one padded batch of 4 lengths
    assert enc.last_at_cls is not None and len(enc.model.encoder.layer) == 1  # of the model's 2 layers
    full = AutoModel.from_pretrained(str(tiny_model)).eval()
    batch = enc.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = full(**batch).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(enc.encode(sentences), expected, atol=2e-6, rtol=0)
    assert HFEncoder(str(tiny_model), pooling="mean").last_at_cls is None  # mean pooling reads every row
