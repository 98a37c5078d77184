"""Evaluation: xsim / xsim++ (LASER semantics) of sentence encoders on FLORES-200-layout data; see docs/eval.md.

``from eval.xsim import xsim``; ``python -m eval --help``; ``python -m eval.bench``.
"""
