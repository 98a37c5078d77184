"""Small synthetic corpora for the data_prep tests."""

from __future__ import annotations

import random
from pathlib import Path

EN = "the cat dog house runs quickly over small big red green tree water sun moon".split()
FR = "le chat chien maison court vite sur petit grand rouge vert arbre eau soleil lune".split()


def sentence_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (French, English) word-for-word pairs of 3-9 words."""
    rng, seen, pairs = random.Random(seed), set(), []
    while len(pairs) < n:
        idx = tuple(rng.randrange(len(EN)) for _ in range(rng.randint(3, 9)))
        if idx not in seen:
            seen.add(idx)
            pairs.append((" ".join(FR[i] for i in idx), " ".join(EN[i] for i in idx)))
    return pairs


def write_tsv(
    path: Path, pairs: list[tuple[str, str]], langs: tuple[str, str] | None = ("fra_Latn", "eng_Latn")
) -> Path:
    header = "src\ttrg\tsrc_lang\ttrg_lang" if langs else "src\ttrg"
    lines = [header] + [f"{s}\t{t}\t{langs[0]}\t{langs[1]}" if langs else f"{s}\t{t}" for s, t in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_mo(path: Path, entries: list[tuple[bytes, bytes]], charset: str = "UTF-8", order: str = "<") -> Path:
    """A GNU .mo file (gettext manual, "MO Files") from (original, translation) byte strings; header first."""
    import struct

    header = f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n > 1);\n"
    entries = sorted([(b"", header.encode("ascii")), *entries])
    n, table_at = len(entries), 28
    data_at = table_at + 16 * n
    blobs, offsets = b"", []
    for orig, _ in entries:
        offsets.append((len(orig), data_at + len(blobs)))
        blobs += orig + b"\0"
    trans_offsets = []
    for _, trans in entries:
        trans_offsets.append((len(trans), data_at + len(blobs)))
        blobs += trans + b"\0"
    head = struct.pack(order + "7I", 0x950412DE, 0, n, table_at, table_at + 8 * n, 0, 0)
    tables = b"".join(struct.pack(order + "2I", *o) for o in offsets + trans_offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + tables + blobs)
    return path
