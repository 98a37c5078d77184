"""Prepared dataset -> packed micro batches: shard checks, the distributed sampler, masking and packing, prefetch."""
