"""Validation on the held-out split: the training losses and in-batch bitext mining accuracy both ways.

Mining: within each validation batch of B pairs, source i is counted correct when the target with the highest
cosine similarity to its clean CLS embedding is target i (src->trg), and the same from the targets (trg->src); the
chance level is 1/B. Masking uses its own fixed-seed collator, so every evaluation of a run sees the same masks.
Sums stay on the device and are all-reduced (runtime/collectives.py), so the numbers cover every rank's share of the
split; they are read once, at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.data.collate import MexmaCollator
from pipeline.data.dataset import fetch_rows
from pipeline.data.sampler import DistributedBatchSampler
from pipeline.training.metrics import log
from runtime import collectives, devices

VALID_SEED_OFFSET = 1_000_003  # masking seed of validation = run seed + this (distinct from training's stream)
LOSS_KEYS = ("loss", "mlm_loss", "cls_loss", "koleo_loss")


def mining_counts(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """src, trg: (B, H) aligned rows -> (2,) on their device: #rows whose nearest target is its own, same for
    targets, by cosine."""
    sim = F.normalize(src.float(), dim=-1) @ F.normalize(trg.float(), dim=-1).T  # (B, B)
    gold = torch.arange(sim.shape[0], device=sim.device)
    return torch.stack([(sim.argmax(dim=1) == gold).sum(), (sim.argmax(dim=0) == gold).sum()])


def mining_correct(src: torch.Tensor, trg: torch.Tensor) -> tuple[int, int]:
    """mining_counts as two ints."""
    s2t, t2s = mining_counts(src, trg).tolist()
    return s2t, t2s


class Validator:
    """Fixed validation batches of this rank: batch_pairs per batch, n_batches over all ranks (0 = all)."""

    def __init__(
        self,
        ds,
        lengths,
        *,
        batch_pairs: int,
        n_batches: int,
        max_length: int,
        special_ids: dict,
        vocab_size: int,
        src_mask_prob: float,
        trg_mask_prob: float,
        seed: int,
        rank: int,
        world_size: int,
    ):
        pairs = min(batch_pairs, len(ds) // world_size)
        self.ds, self.max_length = ds, max_length
        self.batches = []
        if pairs < 2:  # mining needs at least two candidates
            log.warning(
                "validation off: %d valid pairs cannot fill batches of >= 2 pairs on %d rank(s)", len(ds), world_size
            )
        else:
            sampler = DistributedBatchSampler(
                lengths, batch_pairs=pairs, seed=seed, rank=rank, world_size=world_size, shuffle=False
            )
            self.batches = sampler.epoch_batches(0)
            if n_batches:
                self.batches = self.batches[: max(1, n_batches // world_size)]
        self.collator_args = dict(
            special_ids=special_ids,
            vocab_size=vocab_size,
            src_mask_prob=src_mask_prob,
            trg_mask_prob=trg_mask_prob,
            seed=seed + VALID_SEED_OFFSET,
        )

    @torch.no_grad()
    def run(self, engine) -> dict | None:
        """-> {loss, mlm_loss, cls_loss, koleo_loss (means over batches), acc_src2trg, acc_trg2src, pairs}."""
        if not self.batches:
            return None
        collator = MexmaCollator(**self.collator_args)
        engine.eval()
        dev = engine.device
        sums = torch.zeros(len(LOSS_KEYS) + 4, dtype=torch.float64, device=dev)  # losses, n_batches, s2t, t2s, pairs
        for idx in self.batches:
            batch = collator(fetch_rows(self.ds, idx, self.max_length))
            out = engine(**devices.to_device(batch, dev))
            losses = torch.stack([out[k].detach().reshape(()).double() for k in LOSS_KEYS])
            ok = mining_counts(out["src_cls"], out["trg_cls"]).double()
            sums += torch.cat([losses, torch.ones(1, dtype=torch.float64, device=dev), ok, ok.new_full((1,), len(idx))])
        engine.train()
        values = collectives.all_reduce(sums).tolist()  # the one read of the validation
        n, pairs = values[len(LOSS_KEYS)], values[-1]
        result = {k: values[i] / n for i, k in enumerate(LOSS_KEYS)}
        result.update(acc_src2trg=values[-3] / pairs, acc_trg2src=values[-2] / pairs, pairs=int(pairs))
        return result
