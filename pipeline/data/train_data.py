"""The training run's data: the checked dataset, its sampler, the masking collator and the pair log.

Local rank 0 of every node checks the shards that node reads (--data may be a node-local copy); every rank raises
the first failure, none waits forever. The masking of a micro batch is keyed by the batch's place in the global plan
(seed, epoch, global micro batch), not by this rank's stream, so that a relaunch on another number of ranks masks
the same rows the same way.
"""

from __future__ import annotations

from pipeline.data import dataset as D
from pipeline.data.collate import MexmaCollator
from pipeline.data.sampler import PairLog, make_train_sampler
from runtime import collectives


class TrainData:
    """Manifest, special ids, vocabulary size, the train split and its sampler for one run (TrainConfig `cfg`)."""

    def __init__(self, cfg, micro: int, gas: int, rank: int, world: int):
        self.cfg, c = cfg, cfg.data
        self.manifest = D.load_manifest(c.path)
        collectives.on_each_node(lambda: D.verify_shards(c.path, self.manifest, c.verify), (D.DataError,))
        self.specials = D.special_ids(self.manifest)
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.train = D.load_split(c.path, "train", self.manifest)
        self.sampler = make_train_sampler(cfg, self.manifest, micro, gas, rank, world)
        self.pairs = PairLog(self.sampler)
        self.collator: MexmaCollator | None = None  # make_collator, after the model (its seed order)

    def make_collator(self, seed: int) -> MexmaCollator:
        c = self.cfg.data
        self.collator = MexmaCollator(self.specials, self.vocab_size, c.src_mask_prob, c.trg_mask_prob, seed=seed)
        return self.collator

    def read_rows(self, idx) -> list[dict]:
        """Rows of the micro batch the sampler just returned, the collator keyed to it (BatchStream calls this right
        before the collator)."""
        self.collator.generator.manual_seed(self.sampler.batch_seed())
        return D.fetch_rows(self.train, idx, self.cfg.data.max_length)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "collator": self.collator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.pairs.restart()  # metrics count pairs from the resumed step on
        self.collator.load_state_dict(state["collator"])
