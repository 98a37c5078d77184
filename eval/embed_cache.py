"""Embeddings of large text sides, computed in shards over ranks into memory-mapped files and reused on a rerun.

Layout (``--cache-dir``, default ``OUTPUT.cache``; on the file system every node sees):
``NAME/emb.f16`` (or ``emb.f32``): raw rows, LASER's file format; ``NAME/meta.json``: rows, dim, dtype, the chunk
size and a fingerprint of the model (its files' sizes and times), the encoder settings and the sentences;
``NAME/done/CHUNK``: one marker per finished chunk of ``--chunk`` sentences. Chunk c belongs to rank c mod world
size; each rank writes its rows in place (at the default 65536 rows a chunk starts on a page boundary).
A rerun with the same meta embeds only the chunks without a marker (none after a finished run), so a killed
run resumes and a second mining run on the same texts costs no encoding. A different meta starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from runtime import collectives, devices


def stamp(name: str | None) -> list:
    """A model or tokenizer by name and, for a local path, every file's relative path, size and modification time
    (a retrained or re-exported model in the same directory gets new embeddings)."""
    path = Path(name) if name else None
    if path is None or not path.exists():
        return [name]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [name, *[[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


def fingerprint(args, sentences: list[str]) -> str:
    h = hashlib.sha256()
    settings = [stamp(args.model), stamp(args.tokenizer), args.pooling, args.max_length, args.dtype, args.fp16]
    h.update(json.dumps(settings, default=str).encode())
    for s in sentences:
        h.update(s.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(c0, min(c0 + chunk, n)) for c0 in range(0, n, chunk)]


def _missing(base: Path, meta: dict, chunk: int) -> list[int]:
    """Chunks still to embed: all of them unless meta.json matches ``meta`` (the dim aside)."""
    try:
        old = json.loads((base / "meta.json").read_text())
    except (OSError, ValueError):
        old = None
    n_chunks = len(_chunks(meta["rows"], chunk))
    if old is None or {k: v for k, v in old.items() if k != "dim"} != meta:
        return list(range(n_chunks))
    return [c for c in range(n_chunks) if not (base / "done" / str(c)).exists()]


def _create(base: Path, meta: dict, dim: int, dtype: np.dtype) -> None:
    """Rank 0: a fresh file of the right size and meta.json (done markers cleared)."""
    shutil.rmtree(base / "done", ignore_errors=True)
    (base / "done").mkdir(parents=True)
    np.memmap(base / meta["file"], mode="w+", dtype=dtype, shape=(meta["rows"], dim)).flush()
    (base / "meta.json").write_text(json.dumps({**meta, "dim": dim}) + "\n")


def _encoder(args, rank: int):
    from eval.encode import load_encoder
    from eval.sharded import resolve_model

    model = resolve_model(args, rank)
    device = devices.device_for(args.device)
    return load_encoder(
        model, args.pooling, device, args.dtype, args.batch_tokens, args.max_length, tokenizer=args.tokenizer
    )


def embed_sides(args, sets: dict[str, list[str]], rank: int, size: int) -> list[np.ndarray]:
    """Memory-mapped (rows, dim) embeddings of every named sentence list, in the order of ``sets``."""
    cache = Path(args.cache_dir or f"{args.output}.cache")
    dtype = np.dtype(np.float16 if args.fp16 else np.float32)
    file = f"emb.f{dtype.itemsize * 8}"
    metas = {
        name: {"rows": len(s), "dtype": dtype.name, "file": file, "chunk": args.chunk, "sha": fingerprint(args, s)}
        for name, s in sets.items()
    }
    missing = collectives.broadcast_object({name: _missing(cache / name, metas[name], args.chunk) for name in sets})
    encoder = None
    if any(missing.values()):
        args.out = str(cache)  # a training checkpoint is exported once into CACHE/exported_model
        encoder = _encoder(args, rank)
        dim = encoder.encode([next(iter(sets.values()))[0]]).shape[1]
        if rank == 0:
            for name, todo in missing.items():
                if todo and len(todo) == len(_chunks(metas[name]["rows"], args.chunk)):
                    _create(cache / name, metas[name], dim, dtype)
        collectives.barrier()
    for name, todo in missing.items():
        if todo:
            _embed_chunks(encoder, sets[name], cache / name, todo, args, rank, size)
    collectives.barrier()
    out = []
    for name in sets:
        meta = json.loads((cache / name / "meta.json").read_text())
        out.append(np.memmap(cache / name / meta["file"], mode="r", dtype=dtype, shape=(meta["rows"], meta["dim"])))
    return out


def _embed_chunks(encoder, sentences: list[str], base: Path, todo: list[int], args, rank: int, size: int) -> None:
    meta = json.loads((base / "meta.json").read_text())
    emb = np.memmap(base / meta["file"], mode="r+", dtype=meta["dtype"], shape=(meta["rows"], meta["dim"]))
    bounds = _chunks(meta["rows"], args.chunk)
    for c in todo:
        if c % size != rank:
            continue
        c0, c1 = bounds[c]
        emb[c0:c1] = encoder.encode(sentences[c0:c1])
        emb.flush()
        (base / "done" / str(c)).touch()
    del emb
