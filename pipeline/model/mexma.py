"""MEXMA model: a stock HF `XLMRobertaModel` encoder plus the cross-unmasking head, run on packed batches.

Single-device code that knows nothing of DeepSpeed. The encoder and the head are unmodified HF modules whose
attention goes through the registered "mexma_block_diag" function (pipeline/model/attention.py), so weights keep
HF names and export is `model.encoder.save_pretrained`.

What follows the original (facebookresearch/mexma `model.py`, run with `--number_of_linear_layers 0
--initialization_method torch_default`):
- head = `XLMRobertaEncoder(XLMRobertaConfig(num_hidden_layers=6, num_attention_heads=8, hidden_size=H))`:
  default FFN 3072, hidden dropout 0.1, layer_norm_eps 1e-12, torch default init, attention dropout off;
- vocabulary projection = one `nn.Linear(H, V)` whose weight is the encoder's word embeddings and whose bias
  is its own: no dense + gelu + LayerNorm transform as in HF's `XLMRobertaLMHead`;
- the encoder is `XLMRobertaForMaskedLM(...).roberta`, i.e. without the pooler;
- mlm = (CE_src + CE_trg) / 2, each a mean over that side's masked tokens; cls = MSE; koleo = mean of both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEncoder

from pipeline.fields import opt
from pipeline.model import losses
from pipeline.model.attention import ATTN_IMPLEMENTATION, packed_attention, varlen_layout
from pipeline.model.backends import BACKENDS, Backends, select_backends
from runtime.received import check_dir

# Encoder shapes: layers, hidden, heads, FFN. large = xlm-roberta-large, base = xlm-roberta-base.
PRESETS = {
    "tiny": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096},
}
HEAD_INITS = ("torch_default", "normal")
_SHAPE_OVERRIDES = {  # ModelConfig field -> XLMRobertaConfig field, for presets only
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "ffn_size": "intermediate_size",
}


class ModelConfigError(ValueError):
    """A bad ModelConfig value; `field` names it, so the training config can name its flag."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"ModelConfig.{field} {problem}")
        self.field = field


@dataclass
class ModelConfig:
    """Model and loss settings; every field has a default (the reference recipe's where it has one)."""

    model: str = opt("tiny", "preset name (tiny, base, large; random init) or a local HF dir / hub name (real weights)")
    num_layers: int | None = opt(None, "preset override: encoder layers")
    hidden_size: int | None = opt(None, "preset override: hidden size")
    num_heads: int | None = opt(None, "preset override: attention heads")
    ffn_size: int | None = opt(None, "preset override: encoder FFN width")
    max_positions: int = opt(514, "preset position table (XLM-R: 512 tokens + padding_idx + 1)")
    hidden_dropout: float | None = opt(None, "encoder hidden dropout; None keeps the preset's / checkpoint's (0.1)")
    attention_dropout: float = opt(0.0, "encoder and head; the reference turns it off")
    head_layers: int = opt(6, "cross-unmasking head depth (reference --number_of_transformer_layers_in_head)")
    head_heads: int = opt(8, "head attention heads (reference --number_of_transformer_attention_heads_in_head)")
    head_ffn: int = opt(3072, "head FFN width (the reference's default XLMRobertaConfig)")
    head_dropout: float = opt(0.1, "head hidden dropout")
    head_init: str = opt("torch_default", "head init: torch_default (reference) or normal (HF, std 0.02)")
    mlm_weight: float = opt(1.0, "w_mlm")
    cls_weight: float = opt(1.0, "w_cls")
    koleo_weight: float = opt(0.01, "w_koleo")
    koleo_eps: float = opt(1e-8, "KoLeo's eps inside the log")
    koleo_global: bool = opt(False, "KoLeo over the all-gathered global batch instead of each rank's batch")
    attention: str = opt(
        "auto", "auto, kernel, varlen, sdpa, ref (pipeline/model/attention.py); MEXMA_KERNELS=ref: ref"
    )
    kernels: bool = opt(True, "False: KoLeo through its PyTorch reference too (as MEXMA_KERNELS=ref)")
    gradient_checkpointing: bool = opt(False, "recompute encoder and head layers in backward")
    ce_chunk_bytes: int = opt(
        0, "byte budget of one fp32 (rows, V) logits block; 0 = by device (1/64 of a GPU's memory, 256 MiB on CPU)"
    )

    def validate(self) -> ModelConfig:
        """Raise ModelConfigError (a ValueError) naming the field on any bad value; returns self."""
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ModelConfigError(name, f"must be a positive int or None, got {value!r}")
        for name in ("head_layers", "head_heads", "head_ffn", "max_positions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ModelConfigError(name, f"must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.ce_chunk_bytes, int) or self.ce_chunk_bytes < 0:
            raise ModelConfigError("ce_chunk_bytes", f"must be an int >= 0 (0: by device), got {self.ce_chunk_bytes!r}")
        for name in ("attention_dropout", "head_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ModelConfigError(name, f"must lie in [0, 1), got {value!r}")
        for name in ("mlm_weight", "cls_weight", "koleo_weight", "koleo_eps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ModelConfigError(name, f"must be finite and >= 0, got {value!r}")
        if self.attention not in BACKENDS:
            raise ModelConfigError("attention", f"must be one of {BACKENDS}, got {self.attention!r}")
        if self.head_init not in HEAD_INITS:
            raise ModelConfigError("head_init", f"must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.attention_dropout > 0 and self.attention in ("kernel", "varlen", "ref"):
            raise ModelConfigError("attention_dropout", f"must be 0 with attention={self.attention!r}")
        if not self.model:
            raise ModelConfigError("model", "must name a preset (tiny, base, large) or a model path")
        overrides = [n for n in _SHAPE_OVERRIDES if getattr(self, n) is not None]
        if overrides and self.model not in PRESETS:
            raise ModelConfigError(
                overrides[0], f"only applies to presets {list(PRESETS)}, not to model={self.model!r}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data).validate()


def encoder_config(cfg: ModelConfig, vocab_size: int, pad_id: int = 1) -> XLMRobertaConfig:
    """XLMRobertaConfig for a preset (+ overrides), with XLM-R's special ids and our attention function."""
    shape = dict(PRESETS[cfg.model])
    shape.update({hf: getattr(cfg, ours) for ours, hf in _SHAPE_OVERRIDES.items() if getattr(cfg, ours) is not None})
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise ValueError(
            f"hidden_size {shape['hidden_size']} is not a multiple of heads "
            f"{shape['num_attention_heads']} (ModelConfig.hidden_size / num_heads)"
        )
    hidden_dropout = 0.1 if cfg.hidden_dropout is None else cfg.hidden_dropout
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=cfg.max_positions,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=pad_id,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        **shape,
    )


def build_encoder(cfg: ModelConfig, vocab_size: int, pad_id: int = 1) -> XLMRobertaModel:
    """Random-init preset or pretrained weights; no pooler (the original used XLMRobertaForMaskedLM.roberta)."""
    if cfg.model in PRESETS:
        config = encoder_config(cfg, vocab_size, pad_id)
        config._attn_implementation = ATTN_IMPLEMENTATION
        return XLMRobertaModel(config, add_pooling_layer=False)
    overrides = {"attention_probs_dropout_prob": cfg.attention_dropout}
    if cfg.hidden_dropout is not None:
        overrides["hidden_dropout_prob"] = cfg.hidden_dropout
    check_dir(cfg.model, "--model")  # a received directory never runs code (runtime/received.py)
    encoder = XLMRobertaModel.from_pretrained(cfg.model, add_pooling_layer=False, trust_remote_code=False, **overrides)
    encoder.config._attn_implementation = ATTN_IMPLEMENTATION
    if encoder.config.vocab_size != vocab_size:
        raise ValueError(
            f"model {cfg.model!r} has vocab_size {encoder.config.vocab_size} but the data's "
            f"tokenizer has {vocab_size}: use the model's own tokenizer (ModelConfig.model)"
        )
    if encoder.config.pad_token_id != pad_id:
        raise ValueError(f"model {cfg.model!r} has pad_token_id {encoder.config.pad_token_id}, data has {pad_id}")
    return encoder


def build_head(cfg: ModelConfig, hidden_size: int) -> XLMRobertaEncoder:
    """The cross-unmasking head: stock XLM-R layers taking hidden states directly (no embeddings)."""
    if hidden_size % cfg.head_heads:
        raise ValueError(f"ModelConfig.head_heads={cfg.head_heads} does not divide hidden size {hidden_size}")
    config = XLMRobertaConfig(
        num_hidden_layers=cfg.head_layers,
        num_attention_heads=cfg.head_heads,
        hidden_size=hidden_size,
        intermediate_size=cfg.head_ffn,
        hidden_dropout_prob=cfg.head_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        is_decoder=False,
    )
    config._attn_implementation = ATTN_IMPLEMENTATION
    head = XLMRobertaEncoder(config)
    if cfg.head_init == "normal":  # HF's BERT init; "torch_default" keeps nn.Linear / nn.LayerNorm defaults
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)
                nn.init.zeros_(module.bias)
    return head


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int = 1) -> MexmaModel:
    """Encoder + head + tied vocabulary projection for a tokenizer of vocab_size ids."""
    cfg.validate()
    encoder = build_encoder(cfg, vocab_size, pad_id)
    model = MexmaModel(cfg, encoder, build_head(cfg, encoder.config.hidden_size))
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


class MexmaModel(nn.Module):
    """forward(**packed_batch) -> losses and the clean CLS embeddings (contract 3 in DESIGN)."""

    def __init__(self, cfg: ModelConfig, encoder: XLMRobertaModel, head: XLMRobertaEncoder):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = head
        vocab_size, hidden = encoder.get_input_embeddings().weight.shape
        # Own bias of the tied projection, nn.Linear(H, V)'s default init as in the original: U(-1/sqrt(H), +).
        bound = 1.0 / math.sqrt(hidden)
        self.vocab_bias = nn.Parameter(torch.empty(vocab_size).uniform_(-bound, bound))
        self.backends = Backends.from_config(cfg)  # resolved once at start-up by select_backends
        # Exact savings (docs/model.md "Last layers at the rows that are read"): the encoder's last layer runs the
        # clean views at their CLS row only, the head's last layer at the masked positions only. False runs
        # every layer over every row as before (the tests' and benchmarks' reference); results agree to rounding.
        self.skip_unread_rows = True

    @property
    def vocab_weight(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight  # (V, H), tied

    def enable_gradient_checkpointing(self) -> None:
        """Non-reentrant activation checkpointing of every encoder and head layer. transformers 5.23 names it
        `activation_checkpointing_enable` (the old name warns, deprecated); 5.17 has only `gradient_...`."""
        enable = getattr(self.encoder, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ckpt = lambda fn, *args, **kwargs: torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
        for layer in self.head.layer:
            layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, ckpt

    def select_backends(self, device, dtype, lengths, **injected) -> dict:
        """Resolve attention="auto" (and guard the KoLeo kernel) for this run; call once at start-up.

        pipeline/model/backends.py `select_backends` for the encoder's and the head's heads on a packed batch of
        `lengths` (token counts of one step's sequences) in `dtype`; the model keeps the resolved `Backends` for
        every later forward. Returns {"encoder": report, "head": report, "koleo": report} for the log and the run's
        config.json. `injected` (check=..., timer=..., koleo_check=..., koleo_timer=...) replaces the measurements.
        """
        heads = {"encoder": self.encoder.config.num_attention_heads, "head": self.head.config.num_attention_heads}
        hidden = self.vocab_weight.shape[1]
        self.backends, report = select_backends(
            self.backends, self.cfg, device, dtype, lengths, heads, hidden, **injected
        )
        return report

    def _compute_dtype(self) -> torch.dtype:
        """dtype that q, k, v will have: autocast's when it is on, else the weights'."""
        device = self.vocab_weight.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.vocab_weight.dtype

    def _attn_kwargs(self, cu_seqlens: torch.Tensor, max_seqlen: int, n_tokens: int, stack: str) -> dict:
        backend = self.backends.attention(stack, cu_seqlens.device, self._compute_dtype(), self.training)
        kwargs = {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen, "attention_backend": backend}
        if backend == "sdpa":  # token -> padded-grid map, built once per call instead of once per layer
            kwargs["varlen_layout"] = varlen_layout(cu_seqlens, max_seqlen, n_tokens)
        return kwargs

    def _subset_backend(self, backend: str, stack: str) -> str:
        """The backend of `stack`'s last layer, a query-subset call (`Backends.subset`)."""
        module = self.encoder if stack == "encoder" else self.head
        head_dim = module.config.hidden_size // module.config.num_attention_heads
        return Backends.subset(backend, self.vocab_weight.device, self._compute_dtype(), head_dim)

    def encode_packed(self, input_ids, position_ids, cu_seqlens, max_seqlen, cls_only: bool = False) -> torch.Tensor:
        """(T,) packed ids -> (T, H) last hidden states, one encoder call with block-diagonal attention.

        cls_only=True -> (n_seq, H): the CLS (first) row of each sequence, whose last encoder layer then runs
        only at those rows (keys and values still from every token): the same values as the full call's rows.
        """
        if cls_only:
            return self._encode(input_ids, position_ids, cu_seqlens, max_seqlen, 0, 0)
        out = self.encoder(
            input_ids=input_ids[None],
            position_ids=position_ids[None],
            **self._attn_kwargs(cu_seqlens, max_seqlen, input_ids.numel(), "encoder"),
        )
        return out.last_hidden_state[0]

    def _encode(self, input_ids, position_ids, cu_seqlens, max_seqlen, n_full: int, full_tokens: int):
        """Encoder output at the rows that are read -> (full_tokens + n_seq - n_full, H).

        Every row of the first n_full sequences (the first full_tokens tokens of the stream), then the CLS row of
        each later sequence. All layers but the last are the stock ones over every token; the last runs its
        queries, output projection and FFN only at those rows, its keys and values at every token
        (`_layer_at_rows`), so each returned row equals the full encoder's (up to float rounding).
        """
        n_tokens, n_seq = input_ids.numel(), cu_seqlens.numel() - 1
        if not self.skip_unread_rows:
            hidden = self.encode_packed(input_ids, position_ids, cu_seqlens, max_seqlen)
            return torch.cat([hidden[:full_tokens], hidden[cu_seqlens[n_full:-1].long()]])
        attn = self._attn_kwargs(cu_seqlens, max_seqlen, n_tokens, "encoder")
        x = self.encoder.embeddings(input_ids=input_ids[None], position_ids=position_ids[None])  # (1, T, H)
        *layers, last = self.encoder.encoder.layer
        for layer in layers:  # as XLMRobertaEncoder.forward calls them (positional args for checkpointing)
            x = layer(x, None, None, **attn)
        x = x[0]  # (T, H)
        backend, n_cls = attn["attention_backend"], n_seq - n_full
        subset = self._subset_backend(backend, "encoder")
        cu_q = torch.arange(n_cls + 1, dtype=cu_seqlens.dtype, device=cu_seqlens.device)  # one query per sequence
        cu_k = cu_seqlens[n_full:] - cu_seqlens[n_full]  # (n_cls + 1,) their tokens, from full_tokens on
        cls_layouts, full_layout = {}, None
        if backend == "sdpa":  # the full call's grid, split at sequence n_full (its rows are sequence-major)
            flat, valid, length = attn["varlen_layout"]
            full_layout = (flat[:full_tokens], valid[:n_full], length)
            cls_layouts = {"layout": varlen_layout(cu_q, 1, n_cls)}
            cls_layouts["kv_layout"] = (flat[full_tokens:] - n_full * length, valid[n_full:], length)

        def attend(q, k, v, scale, dropout):  # q: (full_tokens + n_cls, h, d), k / v: (T, h, d)
            cls = packed_attention(q[full_tokens:], k[full_tokens:], v[full_tokens:], cu_q, 1, scale, subset,
                                   dropout, cu_seqlens_k=cu_k, max_seqlen_k=max_seqlen, **cls_layouts)  # fmt: skip
            if not n_full:
                return cls
            full = packed_attention(q[:full_tokens], k[:full_tokens], v[:full_tokens], cu_seqlens[: n_full + 1],
                                    max_seqlen, scale, backend, dropout, full_layout)  # fmt: skip
            return torch.cat([full, cls])

        rows = torch.cat([x[:full_tokens], x[cu_seqlens[n_full:-1].long()]])  # (full_tokens + n_cls, H)
        return _layer_at_rows(last, x, rows, attend)

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, labels, n_pairs, **batch) -> dict:
        """Packed batch (pipeline.data.collate.pack) -> {loss, mlm_loss, cls_loss, koleo_loss, n_masked, src_cls, ...}.

        No host synchronisation and no data-dependent shape: every size comes from the collator as a python
        int (n_pairs, max_seqlen, head_tokens, n_masked_src/trg) and every index as a tensor (mlm_positions).
        Metrics are 0-d device tensors, so a trainer can accumulate them without reading them back.
        Extra batch keys (bookkeeping a data loader may add) are ignored.
        """
        missing = [k for k in _MLM_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}: build it with pipeline.data.collate.pack / MexmaCollator")
        b, max_seqlen = int(n_pairs), int(max_seqlen)
        if cu_seqlens.numel() != 4 * b + 1:
            raise ValueError(f"cu_seqlens has {cu_seqlens.numel()} entries, expected 4 * n_pairs + 1 = {4 * b + 1}")
        # (T_m + 2B, H): every row of the 2B masked views (the head's input), then the clean views' CLS rows
        hidden = self._encode(input_ids, position_ids, cu_seqlens, max_seqlen, 2 * b, batch["head_tokens"])
        src_cls, trg_cls = hidden[batch["head_tokens"] :].split(b)  # clean src CLS, clean trg CLS: (B, H) each
        mlm, parts = self._unmasking_loss(hidden, cu_seqlens[: 2 * b + 1], src_cls, trg_cls, max_seqlen, batch)
        cls_loss = losses.cls_alignment_loss(src_cls, trg_cls)
        use_kernel = self.backends.koleo()
        koleo = 0.5 * sum(
            losses.koleo(losses.gather_for_koleo(x, self.cfg.koleo_global), self.cfg.koleo_eps, use_kernel)
            for x in (src_cls, trg_cls)
        )
        loss = self.cfg.mlm_weight * mlm + self.cfg.cls_weight * cls_loss + self.cfg.koleo_weight * koleo
        return {
            "loss": loss,
            "mlm_loss": mlm,
            "cls_loss": cls_loss,
            "koleo_loss": koleo,
            "src_cls": src_cls,
            "trg_cls": trg_cls,
            **parts,
        }

    def _unmasking_loss(self, hidden, head_cu, src_cls, trg_cls, max_seqlen, batch):
        """Cross-unmasking over both directions in one packed head call -> (mlm loss, logging parts).

        Masked src tokens see the clean trg CLS in their CLS slot and vice versa; the head runs on the 2B masked
        views (the first head_tokens tokens), the projection only at the collator's mlm_positions (src first).
        """
        n_src, n_trg = batch["n_masked_src"], batch["n_masked_trg"]
        other_cls = torch.cat([trg_cls, src_cls], dim=0)  # (2B, H): masked src <- clean trg, masked trg <- src
        head_in = hidden[: batch["head_tokens"]].index_copy(0, head_cu[:-1].long(), other_cls)  # (T_m, H)
        pos = batch["mlm_positions"]  # (N,) = (n_src + n_trg,)
        head_out = self._head_at(head_in, head_cu, max_seqlen, pos, n_src + n_trg, batch)  # (N, H)
        budget = self.cfg.ce_chunk_bytes or losses.device_chunk_bytes(head_out.device)
        rows = losses.chunk_rows(losses.padded_vocab(self.vocab_weight.shape[0]), budget)
        mlm, ce = losses.linear_cross_entropy(
            head_out, self.vocab_weight, self.vocab_bias, batch["mlm_labels"], batch["mlm_weights"], rows
        )
        ce = ce.detach()
        parts = {
            "n_masked": torch.full((), n_src + n_trg, dtype=torch.long, device=hidden.device),  # no H2D copy
            "src_mlm_loss": ce[:n_src].sum() / max(n_src, 1),
            "trg_mlm_loss": ce[n_src:].sum() / max(n_trg, 1),
        }
        return mlm, parts

    def _head_at(self, head_in, head_cu, max_seqlen, pos, n_pos: int, batch) -> torch.Tensor:
        """Head output at the masked positions `pos` (ascending) -> (n_pos, H).

        All head layers but the last run over every row; the last one only at `pos` (keys and values from every
        row). Its query rows per sequence are counted on the device (searchsorted of the sequence bounds in pos);
        their maximum, a python int for the padded query grid, is the collator's `max_masked` (max_seqlen, an
        upper bound, for batches from before it).
        """
        n_tokens = head_in.shape[0]
        attn = self._attn_kwargs(head_cu, max_seqlen, n_tokens, "head")
        if not self.skip_unread_rows:
            return self.head(head_in[None], **attn).last_hidden_state[0][pos]
        *layers, last = self.head.layer
        x = head_in[None]
        for layer in layers:
            x = layer(x, None, None, **attn)
        x = x[0]  # (T_m, H)
        backend = self._subset_backend(attn["attention_backend"], "head")
        cu_q = torch.searchsorted(pos, head_cu.long(), out_int32=True)  # (2B + 1,): masked positions before each
        max_q = max(1, min(int(batch.get("max_masked", max_seqlen)), max_seqlen))
        layouts = {}
        if backend == "sdpa":
            layouts = {"layout": varlen_layout(cu_q, max_q, n_pos), "kv_layout": attn.get("varlen_layout")}

        def attend(q, k, v, scale, dropout):
            return packed_attention(q, k, v, cu_q, max_q, scale, backend, dropout, cu_seqlens_k=head_cu,
                                    max_seqlen_k=max_seqlen, **layouts)  # fmt: skip

        return _layer_at_rows(last, x, x[pos], attend)


def _layer_at_rows(layer, x: torch.Tensor, rows: torch.Tensor, attend) -> torch.Tensor:
    """One stock `XLMRobertaLayer` evaluated at a subset of its input rows -> (R, H).

    x: (T, H) the layer's whole input (keys and values come from every row); rows: (R, H) the input rows whose
    output is wanted (queries, residuals). attend(q (R, h, d), k, v (T, h, d), scale, dropout) -> (R, h, d) is
    the block-diagonal attention of those queries. The math and the submodules (so the weights and their names)
    are those of XLMRobertaLayer.forward: query / key / value, attention.output (dense, dropout, LayerNorm with
    the residual), intermediate and output; hidden dropout just draws masks for fewer rows. Checkpointed like
    the stock layers when activation checkpointing is on.
    """

    def run(x, rows):
        sa = layer.attention.self
        heads, dim = sa.num_attention_heads, sa.attention_head_size
        q = sa.query(rows).view(rows.shape[0], heads, dim)
        k, v = (proj(x).view(x.shape[0], heads, dim) for proj in (sa.key, sa.value))
        ctx = attend(q, k, v, sa.scaling, sa.dropout.p if sa.training else 0.0)  # (R, heads, dim)
        out = layer.attention.output(ctx.reshape(rows.shape[0], heads * dim), rows)
        return layer.feed_forward_chunk(out)

    if layer.gradient_checkpointing and layer.training:
        return layer._gradient_checkpointing_func(run, x, rows)
    return run(x, rows)


_MLM_KEYS = ("head_tokens", "mlm_positions", "mlm_labels", "mlm_weights", "n_masked_src", "n_masked_trg")
