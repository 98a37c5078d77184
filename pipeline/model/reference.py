"""The plain padded MEXMA computation (the original's `dont_use_block_efficient_attention` path).

Stock HF `XLMRobertaModel` with a padded attention mask, four separate encoder calls (masked src, masked trg,
clean src, clean trg), the head on padded masked states with the other side's clean CLS in slot 0, and
full-vocabulary logits at every position followed by `nn.CrossEntropyLoss` (ignore_index -100), as in
facebookresearch/mexma `model.py` `forward` / `training_step`. Shared by tests/pipeline/test_equivalence.py and
pipeline/bench_step.py, so there is one reference, not two.

`PaddedMexma.from_packed(model)` deep-copies a `MexmaModel`'s weights (same parameter names), switches the
attention to a stock implementation ("sdpa" by default, "eager" as in transformers 4.x), and
`unpack_to_padded(batch)` turns our packed batch into the original's padded batch, so both run on the same
tokens and masks.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from kernels import koleo_loss_ref
from pipeline.data.collate import IGNORE_INDEX


def _pad_views(batch: dict, first: int, count: int, pad_value: int, key: str) -> torch.Tensor:
    """Sequences first .. first+count-1 of the packed `key` stream -> (count, L_max) padded."""
    cu = batch["cu_seqlens"].tolist()
    seqs = [batch[key][cu[i] : cu[i + 1]] for i in range(first, first + count)]
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_value)


def unpack_to_padded(batch: dict, pad_id: int = 1) -> dict:
    """Packed batch (contract 3) -> the original collator's padded tensors, (B, L_side) each.

    src_input_ids / trg_input_ids are the masked views, *_labels the original ids at masked positions
    (-100 elsewhere and at padding), *_attention_mask 1 for real tokens; the clean views are rebuilt from labels
    inside the model, exactly as the original's `remove_masking_from_inputs`.
    """
    b = int(batch["n_pairs"])
    out = {}
    for side, first in (("src", 0), ("trg", b)):
        ids = _pad_views(batch, first, b, pad_id, "input_ids")
        out[f"{side}_input_ids"] = ids
        out[f"{side}_labels"] = _pad_views(batch, first, b, IGNORE_INDEX, "labels")
        lens = (batch["cu_seqlens"][first + 1 : first + b + 1] - batch["cu_seqlens"][first : first + b]).long()
        out[f"{side}_attention_mask"] = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
    return out


class PaddedMexma(nn.Module):
    """The reference computation on a copy of a MexmaModel's weights; forward(**padded) -> same keys."""

    def __init__(self, encoder, head, vocab_bias: nn.Parameter, cfg, attn_implementation: str = "sdpa"):
        super().__init__()
        self.cfg, self.encoder, self.head, self.vocab_bias = cfg, encoder, head, vocab_bias
        for config in (self.encoder.config, self.head.config):
            config._attn_implementation = attn_implementation

    @classmethod
    def from_packed(cls, model, attn_implementation: str = "sdpa") -> PaddedMexma:
        """Deep copy of model's encoder, head and vocabulary bias (independent parameters, same names)."""
        encoder, head, bias = copy.deepcopy((model.encoder, model.head, model.vocab_bias))
        return cls(encoder, head, bias, model.cfg, attn_implementation)

    def _encode(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)

    def _head_logits(self, masked_states, attention_mask, other_cls):
        """(B, L, H) masked states, CLS slot <- other side's clean CLS -> full (B, L, V) logits."""
        x = torch.cat([other_cls[:, None, :], masked_states[:, 1:, :]], dim=1)  # (B, L, H)
        mask = create_bidirectional_mask(config=self.head.config, inputs_embeds=x, attention_mask=attention_mask)
        states = self.head(x, attention_mask=mask).last_hidden_state  # (B, L, H)
        weight = self.encoder.get_input_embeddings().weight  # (V, H), tied
        return states @ weight.t() + self.vocab_bias  # (B, L, V)

    def forward(self, src_input_ids, src_attention_mask, src_labels, trg_input_ids, trg_attention_mask, trg_labels):
        masked_src = self._encode(src_input_ids, src_attention_mask)
        masked_trg = self._encode(trg_input_ids, trg_attention_mask)
        clean_src_ids = torch.where(src_labels != IGNORE_INDEX, src_labels, src_input_ids)
        clean_trg_ids = torch.where(trg_labels != IGNORE_INDEX, trg_labels, trg_input_ids)
        src_cls = self._encode(clean_src_ids, src_attention_mask)[:, 0]  # (B, H)
        trg_cls = self._encode(clean_trg_ids, trg_attention_mask)[:, 0]
        src_logits = self._head_logits(masked_src, src_attention_mask, trg_cls)
        trg_logits = self._head_logits(masked_trg, trg_attention_mask, src_cls)
        vocab = src_logits.shape[-1]
        src_mlm = F.cross_entropy(src_logits.reshape(-1, vocab).float(), src_labels.reshape(-1))
        trg_mlm = F.cross_entropy(trg_logits.reshape(-1, vocab).float(), trg_labels.reshape(-1))
        mlm = (src_mlm + trg_mlm) / 2
        cls_loss = F.mse_loss(src_cls.float(), trg_cls.float())
        eps = self.cfg.koleo_eps
        koleo = (koleo_loss_ref(src_cls.float(), eps) + koleo_loss_ref(trg_cls.float(), eps)) / 2
        loss = self.cfg.mlm_weight * mlm + self.cfg.cls_weight * cls_loss + self.cfg.koleo_weight * koleo
        n_masked = int((src_labels != IGNORE_INDEX).sum() + (trg_labels != IGNORE_INDEX).sum())
        return {
            "loss": loss,
            "mlm_loss": mlm,
            "cls_loss": cls_loss,
            "koleo_loss": koleo,
            "src_cls": src_cls,
            "trg_cls": trg_cls,
            "n_masked": n_masked,
            "src_mlm_loss": src_mlm.detach(),
            "trg_mlm_loss": trg_mlm.detach(),
        }
