"""Deterministic, lazily evaluated batches of rows: per-rank memory independent of the corpus size, a data order that
does not depend on the number of ranks, and language-pair sampling with a temperature.

The plan is a sequence of *global micro batches* per epoch, a function of (seed, epoch) only. Optimizer step s of a
run with W ranks and gradient accumulation gas reads global micro batches s*G ... s*G + G - 1 (G = W x gas); rank r
takes micro batches r, r + W, ... of each step. With W' x gas' = G the same step reads the same rows, so a run
resumes on another number of ranks (the global batch kept through accumulation). An epoch ends at its last whole
step: micro batches that cannot fill G are dropped.

Order of the rows (no array of N entries anywhere):
- proportional (the default, --lang-alpha 1 without --lang-weights): epoch position t -> row perm_e(t), perm_e a keyed
  Feistel bijection of [0, N) (cycle-walking on the next even power of two) seeded by (seed, epoch): every row once.
- language-pair sampling: position t draws its pair from the categorical n_pair ** alpha (normalised; overridden by
  --lang-weights), seeded by (seed, epoch, block); the k-th draw of pair p reads its row perm_{e,p,k // n_p}(k mod n_p)
  of the pair's rows (a per-pair Feistel permutation through the shared pair index): without replacement until the
  pair is exhausted, then reshuffled. The state carries one draw counter per pair (hundreds of integers).
- fixed pairs: global micro batch j = positions [j x micro, (j + 1) x micro).
- token budget: blocks of `bucket_batches` batches' worth of consecutive positions (fairseq-style bucketing, done per
  block): sorted by packed cost 2 x (src + trg) tokens, cut greedily under the budget, batches shuffled in the block.
  Only the current block is in memory; the epoch's batch count is estimated from a sample (for --epochs).

State (saved in the checkpoint, JSON-safe): epoch, block, batches consumed of the block, per-pair counters at the block
start, global micro batches consumed; plus seed and G, which a resume must keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.data.dataset import DataError, sampling_tables

ROUNDS = 6
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser constants
FIXED_BLOCK = 64  # fixed-pair micro batches computed together: amortises numpy's per-call cost (~1 ms -> ~50 us)
COST_SAMPLE = 1 << 16  # rows whose mean packed cost sizes the token-budget blocks


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit avalanche hash (uint64 arithmetic wraps, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


def feistel(x: np.ndarray, n, keys: np.ndarray) -> np.ndarray:
    """Keyed bijections of [0, n): element i of x (in [0, n_i)) -> its image under the permutation keyed by keys[:, i].

    x: (m,) positions; n: scalar or (m,) domain sizes (>= 1); keys: (ROUNDS,) or (ROUNDS, m) uint64. Balanced
    Feistel network (ROUNDS rounds of splitmix64) on 2h bits, 4^h >= n; values >= n walk the cycle again (expected
    < 4 passes since 4^h < 4n). One vectorised pass for many domains: the per-pair permutations of a whole block."""
    x = np.asarray(x, dtype=np.uint64)
    n = np.broadcast_to(np.asarray(n, dtype=np.uint64), x.shape)
    keys = np.broadcast_to(np.asarray(keys, dtype=np.uint64).reshape(ROUNDS, -1), (ROUNDS, len(x)))
    bits = np.maximum(2, np.ceil(np.log2(np.maximum(n, 1).astype(np.float64)))).astype(np.uint64)
    half = (bits + np.uint64(1)) >> np.uint64(1)
    mask = (np.uint64(1) << half) - np.uint64(1)
    with np.errstate(over="ignore"):
        y = _encrypt(x, half, mask, keys)
        bad = np.flatnonzero(y >= n)
        while len(bad):
            y[bad] = _encrypt(y[bad], half[bad], mask[bad], keys[:, bad])
            bad = bad[y[bad] >= n[bad]]
    return np.where(n <= 1, x, y).astype(np.int64)


def _encrypt(x: np.ndarray, half: np.ndarray, mask: np.ndarray, keys: np.ndarray) -> np.ndarray:
    left, right = x >> half, x & mask
    for k in keys:  # (m,) round keys
        left, right = right, left ^ (_mix(right ^ k) & mask)
    return (left << half) | right


def round_keys(*words: int) -> np.ndarray:
    """(ROUNDS,) uint64 keys from numpy's SeedSequence of `words` (seed, epoch, ...)."""
    return np.random.SeedSequence([int(w) for w in words]).generate_state(ROUNDS, np.uint64)


class FeistelPermutation:
    """perm(positions) for one domain [0, n) and one key: `feistel` with a scalar n."""

    def __init__(self, n: int, key: tuple[int, ...]):
        self.n, self.keys = int(n), round_keys(*key)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return feistel(positions, self.n, self.keys)


@dataclass
class PairTable:
    """Language pairs of a split: names, rows per pair, the shared pair-grouped row index and each row's pair code."""

    names: list[str]
    counts: np.ndarray  # (P,) int64
    index: np.ndarray  # (N,) rows grouped by pair (memory-mapped)
    codes: np.ndarray  # (N,) uint16 pair of each row (memory-mapped)

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)  # (P,) first index entry


def pair_probabilities(counts: np.ndarray, alpha: float, overrides: dict[int, float] | None = None) -> np.ndarray:
    """p_i proportional to n_i ** alpha (pairs without rows get 0); `overrides` {pair code: weight} replace the
    normalised alpha share of those pairs before renormalising. ValueError on a zero total.

    Computed without overflow: n ** alpha in logs (alpha log n - max, then exp: 1000 ** 1000 is no inf), the weights
    divided by their largest before summing (1e308 + 1e308 is no inf)."""
    counts = np.asarray(counts, dtype=np.float64)
    has = counts > 0
    logw = np.where(has, alpha * np.log(np.where(has, counts, 1.0)), -np.inf)
    w = np.exp(logw - logw[has].max()) if has.any() else np.zeros_like(counts)
    w = w / w.sum() if w.sum() > 0 else w
    for code, weight in (overrides or {}).items():
        w[code] = weight if counts[code] > 0 else 0.0
    top = w.max() if len(w) else 0.0
    if not np.isfinite(w).all() or top <= 0:
        raise ValueError("the pair weights sum to zero (every weighted pair has no rows or weight 0)")
    w = w / top
    return w / w.sum()


class _Positions:
    """Epoch position -> row: proportional (one Feistel permutation) or pair-sampled (categorical + pair cursors)."""

    def __init__(self, n_rows: int, seed: int, shuffle: bool, pairs: PairTable | None, probs: np.ndarray | None):
        self.n_rows, self.seed, self.shuffle, self.pairs, self.probs = n_rows, seed, shuffle, pairs, probs
        self.cum = np.cumsum(probs) if probs is not None else None
        self._perm_key, self._perm = None, None

    @property
    def sampled(self) -> bool:
        return self.probs is not None

    def rows(self, epoch: int, start: int, stop: int, cursors: np.ndarray | None) -> np.ndarray:
        """Rows at positions [start, stop) of `epoch`; advances `cursors` (pair mode) in place."""
        if not self.sampled:
            pos = np.arange(start, stop, dtype=np.int64)
            return self._perm_of(epoch)(pos) if self.shuffle else pos
        u = np.random.default_rng([self.seed, epoch, start]).random(stop - start)
        draws = np.minimum(np.searchsorted(self.cum, u * self.cum[-1], side="right"), len(self.cum) - 1)
        order = np.argsort(draws, kind="stable")
        ranked = draws[order]
        k = np.empty(len(draws), dtype=np.int64)  # draw number of each position within its pair, this epoch
        k[order] = cursors[ranked] + np.arange(len(draws)) - np.searchsorted(ranked, ranked, side="left")
        cursors += np.bincount(draws, minlength=len(cursors))
        n_p = self.pairs.counts[draws]
        cycle = k // n_p  # a new permutation of the pair each time it is exhausted
        tweak = (draws.astype(np.uint64) << np.uint64(40)) | cycle.astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = _mix(round_keys(self.seed, epoch, 7)[:, None] ^ _mix(tweak)[None, :])  # (ROUNDS, m)
        local = feistel(k % n_p, n_p, keys)
        return np.asarray(self.pairs.index[self.pairs.starts[draws] + local], dtype=np.int64)

    def _perm_of(self, epoch: int) -> FeistelPermutation:
        if self._perm_key != epoch:
            self._perm_key, self._perm = epoch, FeistelPermutation(self.n_rows, (self.seed, epoch))
        return self._perm


@dataclass
class SamplerState:
    epoch: int = 0
    index: int = 0  # micro batches this rank consumed in `epoch`


class _EpochStream:
    """Global micro batches of one epoch, in order; state() / restore() make the position checkpointable."""

    def __init__(self, plan: DistributedBatchSampler, epoch: int):
        self.plan, self.epoch = plan, epoch
        self.block, self.offset, self.micro = 0, 0, 0
        self.cursors = np.zeros(len(plan.pairs.counts), dtype=np.int64) if plan.positions.sampled else None
        self._cached_block, self._batches, self._cursors_after = -1, [], None

    def state(self) -> dict:
        cursors = None if self.cursors is None else self.cursors.tolist()
        return {
            "epoch": self.epoch,
            "block": self.block,
            "offset": self.offset,
            "micro": self.micro,
            "cursors": cursors,
        }

    def restore(self, s: dict) -> None:
        self.epoch, self.block, self.offset, self.micro = (
            int(s["epoch"]),
            int(s["block"]),
            int(s["offset"]),
            int(s["micro"]),
        )
        self.cursors = None if s.get("cursors") is None else np.asarray(s["cursors"], dtype=np.int64)
        self._cached_block = -1

    def next(self) -> np.ndarray | None:
        """The next global micro batch, or None when the epoch is exhausted."""
        while True:
            if self.block >= self.plan.n_blocks:
                return None
            batches = self._block_batches()
            if self.offset < len(batches):
                self.offset += 1
                self.micro += 1
                return batches[self.offset - 1]
            self.block, self.offset = self.block + 1, 0
            if self._cursors_after is not None:
                self.cursors = self._cursors_after

    def _block_batches(self) -> list[np.ndarray]:
        if self._cached_block != self.block:
            cursors = None if self.cursors is None else self.cursors.copy()
            self._batches = self.plan.block_batches(self.epoch, self.block, cursors)
            self._cached_block, self._cursors_after = self.block, cursors
        return self._batches


class DistributedBatchSampler:
    """This rank's micro batches of row indices, from the global plan (see the module docstring).

    lengths: (N, 2) token counts (any integer dtype, memory-mapped is fine), clipped at max_length when given.
    Exactly one of batch_pairs / batch_tokens (> 0) picks the mode. pairs + probs switch on pair sampling
    (probs from `pair_probabilities`); epoch_pairs then sets the positions per epoch (default N).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        batch_pairs: int = 0,
        batch_tokens: int = 0,
        bucket_batches: int = 100,
        max_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        shuffle: bool = True,
        pairs: PairTable | None = None,
        probs: np.ndarray | None = None,
        epoch_pairs: int = 0,
    ):
        if (batch_pairs > 0) == (batch_tokens > 0):
            raise ValueError(f"exactly one of batch_pairs ({batch_pairs}) / batch_tokens ({batch_tokens}) must be > 0")
        if not 0 <= rank < world_size or grad_accum < 1:
            raise ValueError(f"rank {rank} outside world size {world_size} or grad_accum {grad_accum} < 1")
        self.lengths, self.max_length = lengths, max_length
        self.batch_pairs, self.batch_tokens, self.bucket_batches = batch_pairs, batch_tokens, bucket_batches
        self.seed, self.rank, self.world_size, self.gas = seed, rank, world_size, grad_accum
        self.global_micro = world_size * grad_accum  # G: micro batches per optimizer step, all ranks
        self.pairs = pairs
        self.positions = _Positions(len(lengths), seed, shuffle, pairs if probs is not None else None, probs)
        self.n_positions = (epoch_pairs or len(lengths)) if probs is not None else len(lengths)
        self.n_fixed = self.n_positions // batch_pairs if batch_pairs else 0  # micro batches; last partial dropped
        self.block_size = batch_pairs * FIXED_BLOCK if batch_pairs else self._token_block_size()
        n_used = self.n_fixed * batch_pairs if batch_pairs else self.n_positions
        self.n_blocks = math.ceil(n_used / self.block_size)
        self.n_used = n_used
        self.state = SamplerState()
        self._stream = _EpochStream(self, 0)
        self._step, self._k, self._before = None, 0, None
        self._pair_counts = np.zeros(len(pairs.counts), dtype=np.int64) if pairs is not None else None
        self._len_cache = None

    # -- the plan --------------------------------------------------------------------------------------------------
    def cost(self, rows: np.ndarray) -> np.ndarray:
        """Tokens a pair puts in the packed stream: 4 views = 2 x (src + trg), each side cut to max_length."""
        lens = np.asarray(self.lengths[np.sort(rows)] if len(rows) else np.zeros((0, 2)), dtype=np.int64)
        lens = lens[np.argsort(np.argsort(rows, kind="stable"), kind="stable")]  # back to the order of rows
        if self.max_length:
            lens = np.minimum(lens, self.max_length)
        return 2 * lens.sum(axis=1)

    def _token_block_size(self) -> int:
        n = min(len(self.lengths), COST_SAMPLE)
        sample = self.positions._perm_of(0)(np.arange(n)) if n else np.zeros(0, np.int64)
        mean = max(1, int(self.cost(sample).mean())) if n else 1
        return max(1, self.batch_tokens // mean) * self.bucket_batches

    def block_batches(self, epoch: int, block: int, cursors: np.ndarray | None) -> list[np.ndarray]:
        """Global micro batches of one block (fixed pairs: one batch per block); advances cursors in place."""
        start = block * self.block_size
        stop = min(start + self.block_size, self.n_used)
        rows = self.positions.rows(epoch, start, stop, cursors)
        if self.batch_pairs:
            return [rows[i : i + self.batch_pairs] for i in range(0, len(rows), self.batch_pairs)]
        cost = self.cost(rows)
        order = np.argsort(cost, kind="stable")
        batches = _cut(rows[order], cost[order], self.batch_tokens)
        shuffle = np.random.default_rng([self.seed, epoch, block, 1]).permutation(len(batches))
        return [batches[i] for i in shuffle]

    # -- this rank's view ------------------------------------------------------------------------------------------
    def next_batch(self) -> np.ndarray:
        """This rank's next micro batch; advances (and rolls into the next epoch at its last whole step)."""
        if self._step is None or self._k >= self.gas:
            self._begin_step()
        batch = self._step[self._k * self.world_size + self.rank]
        self._k += 1
        self.state.index += 1
        return batch

    def _begin_step(self, count: bool = True) -> None:
        self._before = self._stream.state()
        step = self._take(self._stream)
        if step is None:
            self._stream = _EpochStream(self, self.state.epoch + 1)
            self.state = SamplerState(self.state.epoch + 1, 0)
            self._before = self._stream.state()
            step = self._take(self._stream)
        if step is None:
            raise DataError(
                f"an epoch yields no batch for a whole optimizer step: {self.global_micro} micro batches needed "
                f"(world size "
                f"{self.world_size} x gradient accumulation {self.gas}) from {self.n_positions} pairs (--batch-pairs "
                f"{self.batch_pairs} / --batch-tokens {self.batch_tokens}); lower the batch size or add data"
            )
        self._step, self._k = step, 0
        if self._pair_counts is not None and count:  # cumulative, part of the state: rewound with it
            rows = np.concatenate(step)
            self._pair_counts += np.bincount(
                np.asarray(self.pairs.codes[np.sort(rows)]), minlength=len(self._pair_counts)
            )

    def _take(self, stream: _EpochStream) -> list[np.ndarray] | None:
        out = []
        for _ in range(self.global_micro):
            batch = stream.next()
            if batch is None:
                return None
            out.append(batch)
        return out

    def __len__(self) -> int:
        """Micro batches per epoch on this rank (token budget: estimated from the first block)."""
        if self._len_cache is None:
            if self.batch_pairs:
                micro = self.n_fixed
            else:
                first = self.block_batches(0, 0, self._fresh_cursors())
                per_batch = max(1.0, sum(len(b) for b in first) / max(1, len(first)))
                micro = int(self.n_positions / per_batch)
            self._len_cache = (micro // self.global_micro) * self.gas
        return self._len_cache

    def _fresh_cursors(self) -> np.ndarray | None:
        return np.zeros(len(self.pairs.counts), dtype=np.int64) if self.positions.sampled else None

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Every micro batch of this rank in `epoch`, materialised (small data: validation and tests only)."""
        stream, out = _EpochStream(self, epoch), []
        while (step := self._take(stream)) is not None:
            out.extend(step[k * self.world_size + self.rank] for k in range(self.gas))
        return out

    def batch_seed(self) -> int:
        """A seed of the micro batch last returned, from its place in the global plan (seed, epoch, global micro
        batch index): the same whatever the world size (the trainer keys the masking with it)."""
        j = int(self._before["micro"]) + (self._k - 1) * self.world_size + self.rank
        a, b = np.random.SeedSequence([self.seed, int(self._before["epoch"]), j, 0x6D61736B]).generate_state(2)
        return (int(a) << 31) ^ int(b)  # < 2^63

    # -- pair statistics -------------------------------------------------------------------------------------------
    def pair_shares(self) -> dict[str, float]:
        """Target share of each language pair in the sampled rows."""
        if self.pairs is None:
            return {}
        probs = self.positions.probs
        if probs is None:
            probs = self.pairs.counts / max(1, self.pairs.counts.sum())
        return {name: float(p) for name, p in zip(self.pairs.names, probs)}

    def pair_counts(self, state: dict | None = None) -> dict[str, int]:
        """Rows per pair of all global steps begun in this run, as of `state` (a `state_dict()`, e.g. the consumed
        batch's while a prefetch thread runs ahead; default: now). Identical on every rank: no collective."""
        counts = self._pair_counts if state is None else state.get("pair_counts")
        if counts is None or self.pairs is None:
            return {}
        return {n: int(c) for n, c in zip(self.pairs.names, counts) if c}

    # -- checkpointing ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        at_boundary = self._step is None or self._k >= self.gas
        stream = self._stream.state() if at_boundary else self._before
        return {
            "version": 2,
            "epoch": self.state.epoch,
            "index": self.state.index,
            "seed": self.seed,
            "global_micro": self.global_micro,
            "world_size": self.world_size,
            "in_step": 0 if at_boundary else self._k,
            "stream": stream,
            "pair_counts": None if self._pair_counts is None else self._pair_counts.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"sampler state was saved with seed {state.get('seed')}, this run has {self.seed}: resuming would not "
                "continue the same data order (keep --seed)"
            )
        if "stream" not in state:
            raise ValueError("sampler state of an older version (per-rank plan): resume with the version that wrote it")
        saved_g, in_step = state.get("global_micro"), int(state.get("in_step", 0))
        if saved_g != self.global_micro or (in_step and state.get("world_size") != self.world_size):
            raise ValueError(
                f"sampler state was saved with a global batch of {saved_g} micro batches (world size "
                f"{state.get('world_size')} x gradient accumulation), this run has world size {self.world_size} x "
                f"gradient accumulation {self.gas} = {self.global_micro}: resuming would change the data order"
            )
        if self._pair_counts is not None and state.get("pair_counts") is not None:
            self._pair_counts = np.asarray(state["pair_counts"], dtype=np.int64)
        self._stream = _EpochStream(self, int(state["stream"]["epoch"]))
        self._stream.restore(state["stream"])
        steps = self._stream.micro // self.global_micro
        self.state = SamplerState(self._stream.epoch, steps * self.gas)
        self._step, self._k = None, 0
        if in_step:
            self._begin_step(count=False)  # the saved counts include the step begun
            self._k, self.state.index = in_step, self.state.index + in_step


class PairLog:
    """Rows per language pair read since the last metrics record, from the sampler's cumulative counts.

    The counts are those of the consumed batches' sampler state (a prefetch thread runs ahead of the steps); a
    resumed run counts from the resumed step on (`restart`)."""

    def __init__(self, sampler: DistributedBatchSampler):
        self.sampler, self.last = sampler, {}

    def restart(self) -> None:
        self.last = self.sampler.pair_counts()

    def since_last(self, state: dict | None = None) -> dict[str, int]:
        """Pairs per language pair since the previous call, as of `state` (a sampler state_dict; default: now)."""
        total, last = self.sampler.pair_counts(state), self.last
        self.last = total
        return {k: v - last.get(k, 0) for k, v in total.items() if v != last.get(k, 0)}


def _cut(idx: np.ndarray, cost: np.ndarray, budget: int) -> list[np.ndarray]:
    """Greedy cut of length-sorted idx into runs with sum(cost) <= budget (a lone pair over budget stays alone)."""
    out, start, total = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if i > start and total + c > budget:
            out.append(idx[start:i])
            start, total = i, 0
        total += c
    if start < len(idx):
        out.append(idx[start:])
    return out


def sampling_probabilities(alpha: float, weights_file: str, pairs: PairTable) -> np.ndarray | None:
    """Pair probabilities of --lang-alpha / --lang-weights; None for proportional sampling (alpha 1, no file).

    Raises ConfigError naming the flag: alpha < 0, an unreadable file, a pair the data does not have, a weight that
    is negative or not finite, a zero total."""
    from pipeline.config.schema import ConfigError

    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ConfigError(f"--lang-alpha: must be a finite number >= 0, got {alpha}")
    if alpha == 1.0 and not weights_file:
        return None
    overrides = _read_weights(weights_file, pairs.names) if weights_file else None
    try:
        return pair_probabilities(pairs.counts, alpha, overrides)
    except ValueError as e:
        flag = "--lang-weights " + weights_file if weights_file else f"--lang-alpha {alpha}"
        raise ConfigError(f"{flag}: {e}") from e


def _read_weights(path: str, names: list[str]) -> dict[int, float]:
    import json

    from pipeline.config.schema import ConfigError

    try:
        obj = json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--lang-weights {path}: unreadable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ConfigError(f'--lang-weights {path}: expected an object {{"src-trg": weight}}, got {type(obj).__name__}')
    code = {n: i for i, n in enumerate(names)}
    out = {}
    for name, w in obj.items():
        if name not in code:
            raise ConfigError(f"--lang-weights {path}: pair {name!r} is not in the training data (pairs: {names})")
        if isinstance(w, bool) or not isinstance(w, int | float) or not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"--lang-weights {path}: weight of {name!r} must be a finite number >= 0, got {w!r}")
        out[code[name]] = float(w)
    return out


def make_train_sampler(cfg, manifest: dict, micro: int, grad_accum: int, rank: int, world_size: int):
    """The training sampler of a TrainConfig over the split's shared sampling files; rank 0 logs the pair shares."""
    import logging

    c = cfg.data
    tables = sampling_tables(c.path, "train", manifest, c.verify, rank)
    pairs = PairTable(tables["pairs"], tables["counts"], tables["pair_index"], tables["pair_ids"])
    probs = sampling_probabilities(c.lang_alpha, c.lang_weights, pairs)
    sampler = DistributedBatchSampler(
        tables["lengths"],
        batch_pairs=0 if c.batch_tokens else micro,
        batch_tokens=c.batch_tokens,
        bucket_batches=c.bucket_batches,
        max_length=c.max_length,
        seed=cfg.run.seed,
        rank=rank,
        world_size=world_size,
        grad_accum=grad_accum,
        pairs=pairs,
        probs=probs,
        epoch_pairs=c.epoch_pairs,
    )
    if rank == 0 and c.epoch_pairs and probs is None:
        logging.getLogger("pipeline.train").warning(
            "--epoch-pairs %d ignored: sampling is proportional (--lang-alpha 1, no --lang-weights), an epoch reads "
            "every row once",
            c.epoch_pairs,
        )
    if rank == 0:
        mode = "proportional to rows" if probs is None else f"alpha {c.lang_alpha}, weights {c.lang_weights or '-'}"
        logging.getLogger("pipeline.train").info(
            "sampling %d language pairs (%s), %d pairs per epoch: %s",
            len(pairs.names),
            mode,
            sampler.n_positions,
            shares_summary(sampler.pair_shares()),
        )
    return sampler


def shares_summary(shares: dict[str, float], shown: int = 4) -> str:
    """The largest and smallest shares of a long list, for the console (config.json's resolved.pair_shares has all)."""
    items = sorted(shares.items(), key=lambda kv: -kv[1])
    fmt = lambda kv: f"{kv[0]} {100 * kv[1]:.2f}%"
    if len(items) <= 2 * shown:
        return " ".join(map(fmt, items))
    return (
        f"largest {' '.join(map(fmt, items[:shown]))} ... smallest {' '.join(map(fmt, items[-shown:]))} "
        "(every share: config.json, resolved.pair_shares)"
    )
