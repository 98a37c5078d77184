"""MEXMA masking and packing collator: rows of (src_ids, trg_ids) -> one flat packed batch.

Masking follows the original's `DataCollatorWithMaskingAndPadding.torch_mask_tokens` (itself HF's
`DataCollatorForLanguageModeling`): each side independently, a per-side ratio of the non-special tokens is
selected, of those 80% become `<mask>`, 10% a random token, 10% stay unchanged. Two deliberate differences:
- at least one token per sentence is selected (where the sentence has a non-special token), instead of the
  original's "at least one in the whole batch" retry loop, so no sentence contributes nothing;
- random replacements are drawn from the non-special ids only (the original drew from the whole vocabulary,
  so a masked token could become `<pad>` or `</s>`).

Packed layout (contract 3 in DESIGN): the 4B sequences masked src (B), masked trg (B), clean src (B),
clean trg (B) are concatenated into one token stream with FlashAttention-style `cu_seqlens`.

Everything that decides a shape in the model's forward is computed here, on the CPU, and shipped with the batch
(python ints stay ints, index tensors travel to the device with the rest), so the forward makes no host sync
and has no data-dependent shape: `head_tokens` (the 2B masked views'
length of the stream), `mlm_positions` (flat indices of the masked tokens in it, src first), their
`mlm_labels` and `mlm_weights` (each side's mean, then the mean of both sides), and the counts `n_masked`,
`n_masked_src`, `n_masked_trg`, `max_seqlen`, `max_masked` (most masked tokens in one sequence).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label of every position that is not a masked token (torch cross_entropy's default)
REQUIRED_SPECIALS = ("bos", "pad", "eos", "unk", "mask")


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


class MexmaCollator:
    """Masks both sides of each pair and packs the four views into one flat batch.

    special_ids: {"bos", "pad", "eos", "unk", "mask"} -> id (the prepared dataset manifest's `special_ids`).
    vocab_size: size of the tokenizer's vocabulary; random replacements come from its non-special ids.
    src_mask_prob / trg_mask_prob: selection ratio per side (0 disables masking on that side).
    seed: seeds the masking generator; its state is in `state_dict()` for exact resume.
    """

    def __init__(
        self,
        special_ids: dict,
        vocab_size: int,
        src_mask_prob: float = 0.4,
        trg_mask_prob: float = 0.4,
        seed: int = 0,
    ):
        missing = [k for k in REQUIRED_SPECIALS if k not in special_ids]
        if missing:
            raise ValueError(f"special_ids lacks {missing}; got {special_ids}")
        if vocab_size <= len(set(special_ids.values())):
            raise ValueError(f"vocab_size={vocab_size} leaves no non-special token")
        bad = {k: v for k, v in special_ids.items() if not 0 <= int(v) < vocab_size}
        if bad:
            raise ValueError(f"special_ids {bad} fall outside the vocabulary [0, {vocab_size})")
        self.special_ids = {k: int(v) for k, v in special_ids.items()}
        self.vocab_size = int(vocab_size)
        self.src_mask_prob = _check_prob("src_mask_prob", src_mask_prob)
        self.trg_mask_prob = _check_prob("trg_mask_prob", trg_mask_prob)
        self.seed = int(seed)
        self._specials = torch.tensor(sorted(set(self.special_ids.values())), dtype=torch.long)
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[self._specials] = False
        self._normal_ids = keep.nonzero().squeeze(1)  # (V - n_special,) candidates for random replacement
        self.generator = torch.Generator().manual_seed(self.seed)

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" not in state:
            raise ValueError(f"collator state lacks 'generator'; keys: {sorted(state)}")
        self.seed = int(state.get("seed", self.seed))
        self.generator.set_state(state["generator"])

    # -- masking -----------------------------------------------------------------------------------------------
    def _pad(self, seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) padded with pad id, valid (B, L) bool."""
        lens = torch.tensor([len(s) for s in seqs])
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.special_ids["pad"])
        valid = torch.arange(ids.shape[1])[None, :] < lens[:, None]
        return ids, valid

    def mask_side(self, seqs: list[torch.Tensor], prob: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Mask one side. Returns (masked ids, labels) per sentence; labels = original id or IGNORE_INDEX.

        The generator is advanced by the same amount for any prob (also 0), so one side's ratio never changes
        the other side's masks.
        """
        g = self.generator
        ids, valid = self._pad(seqs)  # (B, L)
        candidate = valid & ~torch.isin(ids, self._specials)
        select = (torch.rand(ids.shape, generator=g) < prob) & candidate
        # At least one selection per sentence that has a candidate: the candidate with the largest random key.
        keys = torch.rand(ids.shape, generator=g).masked_fill(~candidate, -1.0)
        forced = torch.zeros_like(select).scatter_(1, keys.argmax(dim=1, keepdim=True), True) & candidate
        need = ~select.any(dim=1, keepdim=True) & (prob > 0)
        select |= forced & need
        action = torch.rand(ids.shape, generator=g)  # < 0.8: <mask>, [0.8, 0.9): random token, else unchanged
        random_ids = self._normal_ids[torch.randint(len(self._normal_ids), ids.shape, generator=g)]
        masked = torch.where(select & (action < 0.8), self.special_ids["mask"], ids)
        masked = torch.where(select & (action >= 0.8) & (action < 0.9), random_ids, masked)
        labels = torch.where(select, ids, IGNORE_INDEX)
        lens = valid.sum(dim=1).tolist()
        return [m[:n] for m, n in zip(masked, lens)], [y[:n] for y, n in zip(labels, lens)]

    # -- packing -----------------------------------------------------------------------------------------------
    def _rows_to_tensors(self, rows: list[dict], key: str) -> list[torch.Tensor]:
        out = []
        for i, row in enumerate(rows):
            if key not in row:
                raise ValueError(f"row {i} has no '{key}' (keys: {sorted(row)})")
            t = torch.as_tensor(row[key], dtype=torch.long)
            if t.ndim != 1 or t.numel() == 0:
                raise ValueError(f"row {i} '{key}' must be a non-empty 1-d id list, got shape {tuple(t.shape)}")
            if int(t.min()) < 0 or int(t.max()) >= self.vocab_size:
                raise ValueError(f"row {i} '{key}' has ids outside [0, {self.vocab_size}): {t.tolist()}")
            out.append(t)
        return out

    def __call__(self, rows: list[dict]) -> dict:
        """rows: [{"src_ids": [...], "trg_ids": [...], ...}] -> packed batch (see the module docstring)."""
        if not rows:
            raise ValueError("MexmaCollator got an empty list of rows")
        src = self._rows_to_tensors(rows, "src_ids")
        trg = self._rows_to_tensors(rows, "trg_ids")
        src_masked, src_labels = self.mask_side(src, self.src_mask_prob)
        trg_masked, trg_labels = self.mask_side(trg, self.trg_mask_prob)
        seqs = src_masked + trg_masked + src + trg  # 4B sequences, contract order
        no_labels = [torch.full_like(s, IGNORE_INDEX) for s in src + trg]
        return pack(seqs, src_labels + trg_labels + no_labels, n_pairs=len(rows), pad_id=self.special_ids["pad"])


def pack(seqs: list[torch.Tensor], labels: list[torch.Tensor], n_pairs: int, pad_id: int = 1) -> dict:
    """Concatenate sequences into the flat packed batch; XLM-R positions start at pad_id + 1 per sequence."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lens, dim=0)
    position_ids = torch.cat([torch.arange(pad_id + 1, pad_id + 1 + n, dtype=torch.long) for n in lens.tolist()])
    flat_labels = torch.cat(labels).long()  # (T,)
    return {
        "input_ids": torch.cat(seqs).long(),  # (T,)
        "position_ids": position_ids,  # (T,)
        "cu_seqlens": cu_seqlens,  # (4B + 1,)
        "max_seqlen": int(lens.max()),
        "labels": flat_labels,
        "n_pairs": int(n_pairs),
        **mlm_targets(flat_labels, cu_seqlens, int(n_pairs)),
    }


def mlm_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor, n_pairs: int) -> dict:
    """CPU-side shapes and weights of the cross-unmasking loss, so the model's forward needs no host sync.

    The head's stream is the first head_tokens = cu_seqlens[2B] tokens (masked src views, then masked trg);
    every position with a label must lie in it. Weights: 0.5 / n_side per token, so sum(w * CE) is the mean
    of the two sides' mean CE (an empty side contributes 0), as the original's two CE means averaged.
    """
    head_tokens = int(cu_seqlens[2 * n_pairs]) if n_pairs else 0
    positions = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # (N,) ascending: src views first
    if positions.numel() and int(positions[-1]) >= head_tokens:
        raise ValueError(f"labels at position {int(positions[-1])}, outside the 2B masked views (< {head_tokens})")
    n_src = int((positions < (int(cu_seqlens[n_pairs]) if n_pairs else 0)).sum())
    n_trg = positions.numel() - n_src
    is_src = torch.arange(positions.numel()) < n_src
    per_seq = torch.searchsorted(positions, cu_seqlens[: 2 * n_pairs + 1].long()).diff()  # (2B,) masked per view
    return {
        "head_tokens": head_tokens,
        "mlm_positions": positions,  # (N,) int64
        "mlm_labels": labels[positions],  # (N,) int64
        "mlm_weights": torch.where(is_src, 0.5 / max(n_src, 1), 0.5 / max(n_trg, 1)).float(),  # (N,) fp32
        "n_masked": int(positions.numel()),
        "n_masked_src": n_src,
        "n_masked_trg": n_trg,
        "max_masked": int(per_seq.max()) if per_seq.numel() else 0,  # the head's last layer's queries per sequence
    }
