"""Sentence encoders for evaluation: any XLM-R-style HF directory, a training output / checkpoint directory
(exported first through ``pipeline.export.export_checkpoint``, into ``--out``), or the built-in ``char3gram`` baseline.
A local model directory without tokenizer files is refused (transformers would fall back to a tokenizer that maps
every word to ``<unk>`` and score it anyway) unless ``--tokenizer`` names one.

HF encoding: tokenise without padding, sort by length (longest first), cut batches under a padded-token budget
(``batch_tokens`` >= rows x longest row), run the encoder, pool (``cls``: the ``<s>`` state, MEXMA's sentence
embedding; ``mean``: the mean over non-padding tokens), return float32 rows in input order. With ``cls`` pooling the
last layer of a BERT-style encoder (XLM-R's) runs its queries, output projection and FFN at the ``<s>`` row only, its
keys and values at every token (``CLSLastLayer``), as the evaluation inside training does: the same embedding for
(1 / layers) less compute.
``sentence-transformers`` pooling runs the directory's own module stack instead (``STEncoder``). A sentence's
embedding depends only on its own language's batches, so any split of languages across ranks gives the same
numbers. fp16/bf16 autocast on CUDA; fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.char3gram import Char3gramEncoder
from runtime.hub import HubUnreachableError, check_hub_name
from runtime.received import RemoteCodeError, check_dir, load_tokenizer, tokenizer_fingerprint

BUILTIN = {"char3gram": Char3gramEncoder}
POOLINGS = ("cls", "mean", "sentence-transformers")
# One of these makes a directory a tokenizer (fast tokenizer, sentencepiece models, BPE / WordPiece vocabularies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


class ModelError(ValueError):
    """The model named by ``--model`` cannot be used; the message says why."""


def length_batches(lengths: list[int], batch_tokens: int, max_rows: int = 512) -> list[list[int]]:
    """Indices sorted by length, longest first, grouped so rows x longest <= batch_tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_rows and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def tokenize(tokenizer, sentences: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each sentence with <s> and </s>, truncated to max_length (the tokenizer keeps </s>)."""
    return tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]


def encode_ids(ids: list[list[int]], embed, dim: int, batch_tokens: int, desc=None, progress=False) -> np.ndarray:
    """(n, dim) float32 rows in input order: ``embed(rows: list[list[int]]) -> (B, dim) tensor`` on the
    ``length_batches`` of ``ids``. Shared by ``HFEncoder`` and the evaluation inside training
    (eval/train_hook.py, which embeds with the live model); the caller sets no_grad / eval mode."""
    out = np.zeros((len(ids), dim), dtype=np.float32)
    batches = length_batches([len(x) for x in ids], batch_tokens)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        out[batch] = embed([ids[i] for i in batch]).float().cpu().numpy()
    return out


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None: plain fp32). ``auto``: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if dtype == "fp32" or (dtype == "auto" and device.type != "cuda"):
        return None
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise ModelError(f"--dtype {dtype} needs a CUDA device; the CPU path runs in fp32")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def tokenizer_source(model: str, tokenizer: str | None = None) -> str:
    """Where the tokenizer comes from: ``tokenizer`` if given, else the model itself, which, when it is a local
    directory, must hold tokenizer files (else ModelError naming them and ``--tokenizer``)."""
    if tokenizer is not None:
        return tokenizer
    path = Path(model)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"--model {model}: no tokenizer there (none of {', '.join(TOKENIZER_FILES)}); transformers would fall "
            "back to a tokenizer that maps every word to <unk>. Point --tokenizer at the model's tokenizer directory "
            "(for a training run: its tokenizer/ folder)"
        )
    return model


def _load_tokenizer(source: str, flag: str):
    try:
        return load_tokenizer(source, flag)
    except RemoteCodeError as err:
        raise ModelError(str(err)) from err
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{flag} {source}: cannot load a tokenizer ({err})") from err


def check_weights_file(path: str) -> None:
    """A local model directory's weights, checked before transformers reads them: model.safetensors whole (its header
    and the tensor bytes it announces), a pickled pytorch_model.bin only through the weights-only unpickler. ModelError
    names the file; it never suggests unpickling with weights_only=False."""
    root = Path(path)
    if not root.is_dir():
        return
    safetensors = root / "model.safetensors"
    if safetensors.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(safetensors), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelError(f"--model {path}: {safetensors} is damaged or truncated ({err}); copy it again") from err
        return
    pickled = root / "pytorch_model.bin"
    if pickled.is_file():
        from pipeline.training.safe_load import SafeLoadError, UnsafeCheckpointError, check_weights_only

        try:
            check_weights_only(pickled)
        except SafeLoadError as err:
            why = "it holds more than tensors" if isinstance(err, UnsafeCheckpointError) else "it is unreadable"
            raise ModelError(
                f"--model {path}: {pickled} cannot be read as plain weights ({why}); loading it could run code it "
                "carries. Use a model.safetensors copy of the weights"
            ) from err


def check_vocabulary(model_dir: str, tokenizer, vocab_size: int, flag: str) -> None:
    """The tokenizer fits the model: no id beyond its embedding table, and, for a MEXMA export (mexma_export.json),
    the very tokenizer it was trained with (its recorded fingerprint)."""
    n = len(tokenizer)
    if n > vocab_size:
        raise ModelError(
            f"{flag}: the tokenizer has {n} ids, the model's embedding table {vocab_size} rows: its ids would index "
            "past the table. Use the model's own tokenizer"
        )
    try:
        record = json.loads((Path(model_dir) / "mexma_export.json").read_text())
    except (OSError, ValueError):
        return
    recorded = record.get("tokenizer_fingerprint") if isinstance(record, dict) else None
    if recorded and recorded != tokenizer_fingerprint(tokenizer):
        raise ModelError(
            f"{flag}: the tokenizer is not the one {model_dir} was trained with (fingerprint "
            f"{tokenizer_fingerprint(tokenizer)[:12]}, mexma_export.json records {recorded[:12]}): its ids would mean "
            "other words and the scores nothing. Use the export's own tokenizer"
        )


class CLSLastLayer:
    """The last layer of a stock BERT-style encoder (``model.encoder.layer[-1]``, XLM-R's) evaluated at the first
    row of each sequence only: ``model`` keeps the other layers, ``__call__(hidden (B, L, H), mask (B, L))`` ->
    (B, H) = the full model's ``last_hidden_state[:, 0]`` up to float rounding. The math and the submodules are those
    of the layer's forward (query / key / value, attention.output with the residual, feed_forward_chunk); eval mode:
    no dropout. ``wrap(model)`` -> None for a model of another shape (then the whole model runs)."""

    def __init__(self, layer):
        self.layer = layer

    @classmethod
    def wrap(cls, model) -> CLSLastLayer | None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        config = model.config
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) < 2 or config.is_decoder:
            return None
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return None  # relative positions enter the scores inside the attention module
        sa = getattr(getattr(layers[-1], "attention", None), "self", None)
        if not all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads", "attention_head_size")):
            return None
        model.encoder.layer = torch.nn.ModuleList(layers[:-1])  # the model's output: the last layer's input
        return cls(layers[-1])

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        layer, (b, n, _) = self.layer, hidden.shape
        sa = layer.attention.self
        heads, dim = sa.num_attention_heads, sa.attention_head_size
        rows = hidden[:, :1]  # (B, 1, H): the <s> rows
        q = sa.query(rows).view(b, 1, heads, dim).transpose(1, 2)  # (B, heads, 1, dim)
        k, v = (proj(hidden).view(b, n, heads, dim).transpose(1, 2) for proj in (sa.key, sa.value))  # (B, heads, L, d)
        keep = mask[:, None, None, :].bool()  # (B, 1, 1, L): padding is never a key
        scale = getattr(sa, "scaling", dim**-0.5)
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
        out = layer.attention.output(ctx.transpose(1, 2).reshape(b, 1, heads * dim), rows)  # (B, 1, H)
        return layer.feed_forward_chunk(out)[:, 0]


class HFEncoder:
    """An ``AutoModel`` + ``AutoTokenizer`` directory encoding sentences to pooled hidden states."""

    def __init__(
        self, path: str, pooling="cls", device="cpu", dtype="auto", batch_tokens=8192, max_length=512, tokenizer=None
    ):
        from transformers import AutoModel

        if pooling not in ("cls", "mean"):
            raise ModelError(f"--pooling must be cls or mean for HFEncoder, got {pooling!r}")
        try:
            check_dir(path, "--model")
        except RemoteCodeError as err:
            raise ModelError(str(err)) from err
        check_weights_file(path)
        try:
            self.model = AutoModel.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            reason = str(err).split("\n")[0]  # the rest may advise weights_only=False
            raise ModelError(f"--model {path}: cannot load an HF model ({type(err).__name__}: {reason})") from err
        source = tokenizer_source(path, tokenizer)
        flag = f"--tokenizer {tokenizer}" if tokenizer else f"--model {path}"
        self.tokenizer = _load_tokenizer(source, flag.split(" ")[0])
        check_vocabulary(path, self.tokenizer, self.model.config.vocab_size, flag)
        self.name, self.pooling, self.batch_tokens = str(path), pooling, batch_tokens
        self.device = torch.device(device)
        self.autocast = pick_dtype(dtype, self.device)
        positions = getattr(self.model.config, "max_position_embeddings", max_length + 2)
        self.max_length = min(max_length, positions - 2)  # XLM-R positions start at padding_idx + 1 = 2
        self.last_at_cls = CLSLastLayer.wrap(self.model) if pooling == "cls" else None
        self.model.to(self.device).eval()
        self.dim = self.model.config.hidden_size

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H)
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def _embed(self, rows: list[list[int]]) -> torch.Tensor:
        """One batch of token id lists -> (B, H) pooled embeddings (padded, autocast as configured)."""
        enc = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        enc = {key: value.to(self.device) for key, value in enc.items()}
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with autocast:
            hidden = self.model(**enc).last_hidden_state  # (B, L, H)
            if self.last_at_cls is not None:
                return self.last_at_cls(hidden, enc["attention_mask"]).float()  # (B, H)
        return self._pool(hidden.float(), enc["attention_mask"])

    @torch.inference_mode()
    def encode(self, sentences: list[str], desc: str | None = None, progress: bool = False) -> np.ndarray:
        ids = tokenize(self.tokenizer, sentences, self.max_length)
        return encode_ids(ids, self._embed, self.dim, self.batch_tokens, desc, progress)


class STEncoder:
    """A sentence-transformers directory (``modules.json``) run through its own modules, e.g. LaBSE's Dense +
    Normalize after pooling, which ``HFEncoder`` would skip. Its ``encode`` sorts by length itself."""

    def __init__(self, path: str, device="cpu", dtype="auto", batch_size=64, tokenizer=None):
        from sentence_transformers import SentenceTransformer

        if not (Path(path) / "modules.json").is_file():
            raise ModelError(f"--model {path}: --pooling sentence-transformers needs a modules.json there")
        tokenizer_source(path, tokenizer)  # the same refusal as HFEncoder's when the directory has no tokenizer
        try:
            check_dir(path, "--model")
        except RemoteCodeError as err:
            raise ModelError(str(err)) from err
        check_weights_file(path)
        try:
            self.model = SentenceTransformer(path, device=str(device), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"--model {path}: cannot load as sentence-transformers ({err})") from err
        if tokenizer is not None:
            self.model[0].tokenizer = _load_tokenizer(tokenizer, "--tokenizer")  # module 0: the Transformer
        autocast = pick_dtype(dtype, torch.device(device))
        if autocast is not None:
            self.model.to(autocast)
        self.name, self.batch_size = str(path), batch_size

    def encode(self, sentences: list[str], desc: str | None = None, progress: bool = False) -> np.ndarray:
        out = self.model.encode(sentences, batch_size=self.batch_size, show_progress_bar=progress)
        return np.asarray(out, dtype=np.float32)


def is_hf_dir(path: Path) -> bool:
    """An HF model directory: its config.json names a ``model_type`` (a training output dir has a config.json
    too, the resolved training config, which does not)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (path / "config.json").is_file()  # unreadable: let from_pretrained report what is wrong
    return isinstance(config, dict) and "model_type" in config


def export_if_needed(model: str, out_dir: str | Path, trust: bool = False) -> str:
    """An HF directory for ``model``: itself, or ``out_dir`` exported from a training / checkpoint dir (under
    ``--out``: on the shared file system, where the ranks of other nodes read it). ``trust``: --trust-checkpoint."""
    path = Path(model)
    if model in BUILTIN or is_hf_dir(path):
        return model
    if not path.exists():
        return _hub_name(model)
    if not path.is_dir():
        raise ModelError(
            f"--model {model}: not a directory (expected an HF model dir, a training output dir, "
            f"a checkpoint dir, or one of {sorted(BUILTIN)})"
        )
    try:
        from pipeline.export import export_checkpoint
    except ImportError as err:
        raise ModelError(f"--model {model}: no config.json, and pipeline.export is unavailable ({err})") from err
    try:
        return export_checkpoint(str(path), str(out_dir), trust=trust)
    except Exception as err:  # any failure of the export means the directory is unusable here
        raise ModelError(
            f"--model {model}: no config.json (not an HF dir) and exporting it as a training "
            f"checkpoint failed: {type(err).__name__}: {err}"
        ) from err


MAKES_A_MODEL = (
    "a model directory is made by `make demo` (runs/demo/train), `make train` (runs/train) or any training's "
    "--output-dir; name one with `make eval MODEL=DIR` or --model DIR"
)


def _hub_name(model: str) -> str:
    """`model` when it can be a hub name the hub or its cache serves; a missing local path is refused at once."""
    head = Path(model).parts[0] if Path(model).parts else model
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or (model.count("/") == 1 and Path(head).is_dir()):
        raise ModelError(f"--model {model}: no such directory; {MAKES_A_MODEL}")
    try:
        check_hub_name(model, "--model", f"a local model dir ({MAKES_A_MODEL}) or {', '.join(sorted(BUILTIN))}")
    except HubUnreachableError as err:
        raise ModelError(str(err)) from None
    return model


def load_encoder(
    model: str, pooling="cls", device="cpu", dtype="auto", batch_tokens=8192, max_length=512, tokenizer=None
):
    """An encoder for an HF dir / hub name (already exported, see ``export_if_needed``) or a built-in name;
    ``tokenizer``: --tokenizer (a directory or hub name) instead of the model's own."""
    if model in BUILTIN:
        return BUILTIN[model]()
    if pooling == "sentence-transformers":
        return STEncoder(model, device, dtype, tokenizer=tokenizer)
    return HFEncoder(model, pooling, device, dtype, batch_tokens, max_length, tokenizer)
