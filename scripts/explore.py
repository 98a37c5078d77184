"""Fast hyperparameter exploration: a learning curve of xsim error in one process, no DeepSpeed, no export.

    PYTHONPATH=. python scripts/explore.py NAME --steps 600 --eval-every 150 --lr 1e-3 \
        --set head_layers=2 --set head_ffn=1024 --set hidden_dropout=0 --set head_dropout=0 --set koleo_weight=1.0

The same model (pipeline.model.build_model with ModelConfig fields from --set), masking collator and prepared data as
pipeline/train.py, trained in one process with plain AdamW (as the DeepSpeed config's: one group, clipping 1.2) and the
trainer's schedule (linear warmup from 0.1 x lr, cosine to 0); every --eval-every steps the encoder's CLS embeddings
of the held-out test set (data/testset devtest, 8 languages -> eng_Latn) are scored with eval.xsim, so one run gives
the whole curve in about 5 minutes on 2 cores (0.5 s per 32-pair step with the 2-layer head). It does not replace
train.py: the demo's recipe was chosen here and then confirmed through the real ZeRO-2 path (docs/demo.md). Appends
one JSON line per run to --log (runs/explore/log.jsonl).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoTokenizer  # noqa: E402

from eval.xsim import xsim  # noqa: E402
from pipeline.config import OptimConfig  # noqa: E402
from pipeline.data import dataset as D  # noqa: E402
from pipeline.data.collate import IGNORE_INDEX, MexmaCollator, pack  # noqa: E402
from pipeline.model.mexma import ModelConfig, build_model  # noqa: E402
from pipeline.training.schedule import WarmupCosine  # noqa: E402
from scripts.sweep import parse_value  # noqa: E402

LANGS = "deu_Latn,fra_Latn,spa_Latn,rus_Cyrl,jpn_Jpan,zho_Hans,tur_Latn,ell_Grek".split(",")


@torch.no_grad()
def embed(model, ids_list, pad_id=1, chunk=256):
    model.eval()
    out = []
    for i in range(0, len(ids_list), chunk):
        seqs = [torch.tensor(x) for x in ids_list[i : i + chunk]]
        b = pack(seqs, [torch.full_like(s, IGNORE_INDEX) for s in seqs], n_pairs=0, pad_id=pad_id)
        h = model.encode_packed(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
        out.append(h[b["cu_seqlens"][:-1].long()].float().numpy())
    model.train()
    return np.concatenate(out)


def evaluate(model, test, pad_id):
    y = embed(model, test["eng_Latn"], pad_id)
    err = n = 0
    per = {}
    for lang in (x for x in test if x != "eng_Latn"):
        e, m = xsim(embed(model, test[lang], pad_id), y, "ratio", 4)
        per[lang] = round(100 * e / m, 1)
        err += e
        n += m
    return round(100 * err / n, 2), per


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/explore.py")
    p.add_argument("name", help="run name (the log record's key)")
    p.add_argument("--data", default="data/prepared", help="prepared data (python -m data_prep.offline --out data)")
    p.add_argument("--testset", default="data/testset", help="held-out test set (devtest split)")
    p.add_argument("--log", default="runs/explore/log.jsonl", help="JSON-lines record of every run (appended)")
    p.add_argument("--langs", default=",".join(LANGS), help="comma-separated test languages, scored -> eng_Latn")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--mask", type=float, default=0.4)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--langs-only", action="store_true", help="train only on pairs whose trg lang is in the test set")
    p.add_argument("--set", action="append", default=[], help="ModelConfig FIELD=VALUE (e.g. head_layers=2)")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    over = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = ModelConfig(**over)
    langs = a.langs.split(",")
    missing = [f"{a.testset}/devtest/{x}.devtest" for x in [*langs, "eng_Latn"]]
    missing = [m for m in missing if not Path(m).is_file()]
    if missing:
        raise SystemExit(f"--testset/--langs: no such file {missing[0]} (run make prep)")
    man = D.load_manifest(a.data)
    sp = D.special_ids(man)
    vocab = int(man["tokenizer"]["vocab_size"])
    ds = D.load_split(a.data, "train", man)
    model = build_model(cfg, vocab, sp["pad"])
    tok = AutoTokenizer.from_pretrained(str(Path(a.data) / "tokenizer"))
    test = {}
    for lang in [*langs, "eng_Latn"]:
        lines = Path(f"{a.testset}/devtest/{lang}.devtest").read_text().splitlines()
        test[lang] = tok(lines, truncation=True, max_length=a.max_len)["input_ids"]
    col = MexmaCollator(sp, vocab, a.mask, a.mask, seed=a.seed)
    rng = np.random.default_rng(a.seed)
    if a.langs_only:
        testl = set(Path(x).name.split(".")[0] for x in Path(a.testset, "devtest").glob("*.devtest"))
        tl = np.array(ds["trg_lang"])
        sl = np.array(ds["src_lang"])
        pool = np.nonzero(np.isin(tl, list(testl)) & np.isin(sl, list(testl)))[0]
    else:
        pool = np.arange(len(ds))
    order = rng.permutation(pool)
    # as the DeepSpeed config's AdamW: one group, weight decay on every parameter
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.wd)
    trainer = OptimConfig()  # the trainer's warmup start and cosine floor
    lr_factor = WarmupCosine(a.steps, a.warmup, trainer.warmup_start_factor, trainer.min_lr_ratio)

    curve = []
    e0, _ = evaluate(model, test, sp["pad"])
    curve.append((0, e0))
    print(f"[{a.name}] step 0 err {e0}", flush=True)
    t0 = time.time()
    hist = []
    for step in range(a.steps):
        idx = order[np.arange(step * a.pairs, (step + 1) * a.pairs) % len(order)]  # wraps on small data
        batch = col(D.fetch_rows(ds, idx, a.max_len))
        for g in opt.param_groups:
            g["lr"] = a.lr * lr_factor(step)
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.2)
        opt.step()
        hist.append([float(out[k].detach()) for k in ("mlm_loss", "cls_loss", "koleo_loss")])
        if (step + 1) % 25 == 0:
            h = np.mean(hist[-25:], axis=0)
            print(f"  {step + 1} mlm {h[0]:.3f} cls {h[1]:.4f} koleo {h[2]:.3f}  {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            e, per = evaluate(model, test, sp["pad"])
            curve.append((step + 1, e))
            print(f"[{a.name}] step {step + 1} err {e} {per}", flush=True)
    rec = {
        "name": a.name,
        "args": vars(a),
        "curve": curve,
        "train_s": round(time.time() - t0),
        "final": np.mean(hist[-25:], axis=0).round(4).tolist(),
    }
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
