"""Unit checks: the cleaner's reasons, the overlap key, the hash split, the tokenizer sample, sentence choice."""

import numpy as np
import pytest

from data_prep.clean import Cleaner, overlap_key
from data_prep.records import Pair
from data_prep.stages.vocab import held_out_keys, in_sample, sample_rates, sample_thresholds
from data_prep.testset import is_sentence


def _pair(src: str, trg: str) -> Pair:
    return Pair(src, trg, "fra_Latn", "eng_Latn", "t:1")


@pytest.mark.parametrize(
    "src, trg, reason",
    [(" ", "x", "empty"), ("a\ud800b", "ab", "invalid_utf8"), ("a\x00b", "ab", "control_chars"),
     ("a\x85b", "ab", "control_chars"), ("x" * 1001, "y" * 1000, "too_long"), ("même", "me\u0302me", "identical"),
     ("ab", "a" * 13, "length_ratio"), ("ok then", "d'accord", None), ("tab\there", "line\nbreak", None)],
)  # fmt: skip
def test_cleaner_reasons(src, trg, reason):
    cleaner = Cleaner()
    result = cleaner.check(_pair(src, trg))
    assert (result if isinstance(result, str) else None) == reason
    if not reason:
        assert result.src == src.strip()


@pytest.mark.parametrize(
    "langs, result",
    [(("fr", "en_GB"), ("fra_Latn", "eng_Latn")), (("und_Zzzz", "und_Zzzz"), ("und_Zzzz", "und_Zzzz")),
     (("la tab 107", "eng_Latn"), "unknown_language"), (("fra_Latn", ""), "unknown_language"),
     (("en", "eng_Latn"), "same_language")],
)  # fmt: skip
def test_cleaner_languages(langs, result):
    got = Cleaner().check(Pair("un chat", "a cat", *langs, "t:1"))
    assert (got if isinstance(got, str) else (got.src_lang, got.trg_lang)) == result


def test_cleaner_nfc_and_held_out():
    cleaner = Cleaner(held_out=frozenset({overlap_key("Could not open the file.")}))
    assert cleaner.check(_pair("  cafe\u0301 ", "coffee")).src == "café"
    assert cleaner.check(_pair("Impossible d'ouvrir", "_Could NOT open the file")) == "test_overlap"


def test_overlap_key():
    assert overlap_key("_Save  the File…") == overlap_key("save the file") == "save the file"
    assert overlap_key("&Open") == "open" and overlap_key("Ｆｕｌｌ width") == "full width"
    assert overlap_key("%s files") != overlap_key("files")


def test_min_valid_takes_the_smallest_keys_and_keeps_one_train_pair():
    stats = [{"kept": 2, "valid": 0, "smallest": [2**62, 2**63]}, {"kept": 1, "valid": 0, "smallest": [2**61]}]
    assert held_out_keys(stats, min_valid=5) == [2**61, 2**62]  # 3 pairs: the 2 smallest keys, 1 left in train
    assert held_out_keys([{"kept": 10, "valid": 8, "smallest": [1, 2]}], min_valid=8) is None  # threshold enough


def test_tokenizer_sample_rates_follow_the_training_temperature():
    counts = {"a": 9000, "b": 900, "c": 100}
    assert all(abs(r - 0.1) < 1e-12 for r in sample_rates(counts, 1.0, 2000).values())  # alpha 1: uniform
    rates = sample_rates(counts, 0.0, 2000)  # 1000 pairs, the same share each: c whole, a and b split the rest
    assert rates["c"] == 1.0 and abs(rates["b"] * 900 - 450) < 1e-6 and abs(rates["a"] * 9000 - 450) < 1e-6
    assert sample_rates(counts, 0.3, None) == dict.fromkeys(counts, 1.0)


def test_tokenizer_sample_is_a_hash_threshold_per_pair():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=20_000, dtype=np.uint64) * np.uint64(2)
    pairs = np.where(np.arange(20_000) % 2 == 0, "a-x", "b-x").astype(object)
    mask = in_sample(keys, pairs, sample_thresholds({"a-x": 10_000, "b-x": 10_000}, 1.0, 4_000))
    assert 1_800 < mask.sum() < 2_200 and abs(mask[::2].sum() - mask[1::2].sum()) < 200  # ~limit / 2 pairs
    assert abs(mask[:10_000].sum() - mask[10_000:].sum()) < 200  # not the first rows only
    thresholds = {"a-x": sample_thresholds({"a-x": 10}, 1.0, 2)["a-x"], "b-x": None}
    mask = in_sample(keys, pairs, thresholds)
    assert mask[1::2].all() and 800 < mask[::2].sum() < 1200  # b whole, a about 1 in 10


@pytest.mark.parametrize(
    "text, ok",
    [("Could not open the file because it is locked.", True), ("Show the program version", True),
     ("Open %s in a new window", False), ("_Open the recent files list", False),
     ("<b>Warning</b> is shown here", False),
     ("Use --force to overwrite files", False), ("The GtkActionGroup this action is in", False),
     ("Too short text", False), ("lowercase start is not a sentence here", False),
     ("Visit https://example.org for more", False), ("1234 5678 9012 3456 7890 1234", False)],
)  # fmt: skip
def test_is_sentence(text, ok):
    assert is_sentence(text) is ok
