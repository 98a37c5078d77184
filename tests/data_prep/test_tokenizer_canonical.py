"""canonical_pieces: a retrained tokenizer gets the same ids although the trainer orders its required characters
from a per-process random HashSet."""

from __future__ import annotations

import random

from data_prep.tokenizer import canonical_pieces

LEARNED = [("▁the", -3.25), ("▁a", -3.5), ("s", -4.0), ("▁file", -5.125), ("ing", -5.125), ("x", -7.0)]
CHARS = list("ĉŝĝĥĵŭ¥¿ÆØÅ阻続競불ປሑ")


def trainer_output(rng: random.Random) -> list[tuple[str, float]]:
    """As UnigramTrainer finalises: learned pieces, then the required characters in a random order, the first
    ones 1e-4 apart below the lowest learned score, the rest at one lower score; floats as summed in a random order."""
    chars = CHARS[:]
    rng.shuffle(chars)
    n_run = 12
    low = min(score for _, score in LEARNED) - 0.5
    tail = [(c, low - 1e-4 * i + rng.uniform(-1e-12, 1e-12)) for i, c in enumerate(chars[:n_run])]
    tail += [(c, low - 1.0) for c in chars[n_run:]]
    noisy = [(p, s + rng.uniform(-1e-12, 1e-12)) for p, s in LEARNED]
    out = noisy + tail
    rng.shuffle(out)
    return out


def test_reruns_give_identical_pieces_and_ids():
    runs = [canonical_pieces(trainer_output(random.Random(seed))) for seed in range(20)]
    assert all(run == runs[0] for run in runs)
    first = runs[0]
    # learned pieces: score descending, ties by piece
    assert [p for p, _ in first[: len(LEARNED)]] == ["▁the", "▁a", "s", "ing", "▁file", "x"]
    tail = first[len(LEARNED) :]
    assert [p for p, _ in tail] == sorted(CHARS)  # the required characters, sorted
    scores = [s for _, s in tail]
    assert scores == sorted(scores, reverse=True) and len(set(scores[:12])) == 12 and len(set(scores[12:])) == 1


def test_learned_pieces_one_step_apart_by_chance_are_kept():
    pieces = [("a", -5.0), ("b", -5.0001), ("▁c", -5.0002), ("d", -6.0)]  # only two single characters in a row
    assert canonical_pieces(pieces) == pieces
