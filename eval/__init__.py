"""Evaluation: xsim / xsim++ (LASER semantics) of sentence encoders on FLORES-200-layout data, BUCC 2018 and
Tatoeba, and margin-based bitext mining (LASER's ``mine_bitexts``); see docs/eval.md.

``from eval.xsim import xsim``; ``from eval.bucc import bucc_f1``; ``python -m eval --help``;
``python -m eval.mine --help``; ``python -m eval.bench``.
"""
