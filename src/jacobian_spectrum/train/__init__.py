"""Training stage: networks, checkpoints and per-epoch trajectories.

spec        a network's settings (ModelSpec) and the built-in networks' parameter counts, without torch
models      the networks (built in, or a researcher's factory) and their checkpoints
loop        the training loop, resumable from its checkpoints
trajectory  per-epoch predictions and errors (``trajectory.h5``)
"""
