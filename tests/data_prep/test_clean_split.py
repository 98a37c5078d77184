"""Unit checks: the cleaner's reasons, the overlap key, the hash split, the tokenizer sample, sentence choice."""

import numpy as np
import pytest

from data_prep import spool
from data_prep.clean import Cleaner, overlap_key
from data_prep.records import Pair
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


def test_split_dedups_first_occurrence_and_is_stable():
    keys = np.array([5, 9, 5, 2**63, 1, 9], dtype=np.uint64)
    splits = spool.assign_splits(keys, valid_fraction=0.25, min_valid=0)
    assert splits.tolist() == [spool.VALID, spool.VALID, spool.DROP, spool.TRAIN, spool.VALID, spool.DROP]
    more = np.concatenate([keys, np.array([2**62, 3], dtype=np.uint64)])  # new data does not move old pairs
    assert spool.assign_splits(more, 0.25, 0)[: len(keys)].tolist() == splits.tolist()
    forced = spool.assign_splits(np.array([2**63, 2**62, 2**61], dtype=np.uint64), 0.0, min_valid=5)
    assert forced.tolist() == [spool.TRAIN, spool.VALID, spool.VALID]  # smallest keys, one pair left in train


def test_tokenizer_sample_is_uniform_and_skips_dropped_rows():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=20_000, dtype=np.uint64) * np.uint64(2)
    splits = np.where(np.arange(20_000) % 10 == 0, spool.DROP, spool.TRAIN).astype(np.int8)
    mask = spool.sample_mask(keys, splits, limit=4_000)
    assert not (mask & (splits == spool.DROP)).any()
    assert 1_800 < mask.sum() < 2_200  # ~limit / 2 pairs
    assert abs(mask[:10_000].sum() - mask[10_000:].sum()) < 200  # not the first rows only
    assert spool.sample_mask(keys, splits, limit=None).sum() == 18_000


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
