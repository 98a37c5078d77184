"""Each rank's share of the sentence sets, encoded: the model resolved once (rank 0 exports a training checkpoint,
every rank reads the export), the sets planned longest first over the ranks (eval.shares). Used by xsim, BUCC,
Tatoeba and mining alike."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from eval import shares
from eval.encode import ModelError, export_if_needed, load_encoder
from runtime import collectives, devices

EXPORTED = "exported_model"  # OUT/exported_model: where a training checkpoint given as --model is exported


def resolve_model(args, rank: int) -> str:
    """Rank 0 exports a training checkpoint once, to OUT/exported_model: under --out, so the ranks of other nodes
    read it from the shared file system; every rank gets the HF path (or rank 0's error)."""
    outcome = None
    if rank == 0:
        try:
            outcome = ("ok", export_if_needed(args.model, Path(args.out) / EXPORTED, args.trust_checkpoint))
        except ModelError as err:
            outcome = ("error", str(err))
    outcome = collectives.broadcast_object(outcome)
    if outcome[0] == "error":
        raise ModelError(outcome[1])
    return outcome[1]


def encode_share(args, texts: dict[str, list[str]], rank: int, size: int) -> tuple[dict, float, int]:
    model = resolve_model(args, rank)
    device = devices.device_for(args.device)
    encoder = load_encoder(
        model, args.pooling, device, args.dtype, args.batch_tokens, args.max_length, tokenizer=args.tokenizer
    )
    share = shares.plan({name: sum(map(len, lines)) for name, lines in texts.items()}, size)[rank]
    progress = not args.no_progress
    start, local = time.perf_counter(), {}
    for name in tqdm(share, desc=f"rank {rank} encoding", unit="set", disable=not progress):
        local[name] = encoder.encode(texts[name], desc=name, progress=progress)
    return local, time.perf_counter() - start, sum(len(texts[name]) for name in share)
