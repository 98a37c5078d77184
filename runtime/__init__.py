"""What training (pipeline/) and evaluation (eval/) both stand on: processes, devices, collectives, RNG state.

Imports nothing of the project's own packages, so every other package may import it.
"""
