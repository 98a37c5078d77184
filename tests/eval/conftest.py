"""Fixtures for tests/eval: a synthetic FLORES-layout test set and a tiny random XLM-R directory.

Nothing is downloaded: the tokenizer is a WordLevel vocabulary trained on the spot with XLM-R's special ids
(<s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last) and the encoder a 2-layer random ``XLMRobertaConfig``.
"""

import json
import random
from pathlib import Path

import pytest

WORDS = (
    "the a cat dog house river city green small large old new red blue walks sees finds likes eats reads "
    "book tree car road sun moon star water bread cheese apple night day morning friend teacher child"
).split()
LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn")


def _translate(sentence: str, lang: str) -> str:
    """A deterministic pseudo-translation: enough shared character 3-grams for char3gram to align most lines."""
    words = sentence.split()
    if lang == "fra_Latn":
        return " ".join(w + "e" for w in words)
    if lang == "deu_Latn":
        return " ".join(w.capitalize() for w in reversed(words))
    if lang == "spa_Latn":
        return " ".join("el" + w for w in words)
    return sentence


def write_flores(root: Path, n: int = 24, split: str = "devtest", langs=LANGS, seed: int = 0) -> Path:
    rng = random.Random(seed)
    english = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + f" {i}" for i in range(n)]
    (root / split).mkdir(parents=True, exist_ok=True)
    for lang in langs:
        lines = [_translate(s, lang) for s in english]
        (root / split / f"{lang}.{split}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_augmented(root: Path, split: str = "devtest", target: str = "eng_Latn") -> None:
    """xsim++ files: for every 3rd English line a copy with its number changed (a 'number' error type)."""
    english = (root / split / f"{target}.{split}").read_text(encoding="utf-8").splitlines()
    aug, errtypes = [], {}
    for i, line in enumerate(english[::3]):
        changed = line.rsplit(" ", 1)[0] + f" {1000 + i}"
        aug.append(changed)
        errtypes[changed] = {"src": line, "errtype": "number"}
    (root / f"{split}_augmented").mkdir(exist_ok=True)
    (root / f"{split}_augmented" / f"{target}_augmented.{split}").write_text("\n".join(aug) + "\n", encoding="utf-8")
    (root / f"{split}_augmented" / f"{target}_errtype.{split}.json").write_text(json.dumps(errtypes), encoding="utf-8")


@pytest.fixture
def flores(tmp_path) -> Path:
    return write_flores(tmp_path / "flores")


def build_tiny_model(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    corpus = []
    for lang in LANGS:
        corpus += [_translate(" ".join(WORDS[i : i + 6]), lang) for i in range(len(WORDS))]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    tok.add_special_tokens(["<mask>"])  # gets the last id, as in XLM-R
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )  # fmt: skip
    assert fast.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, len(fast) - 1]
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    XLMRobertaModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_xlmr"))
