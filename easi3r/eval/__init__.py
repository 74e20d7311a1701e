"""Evaluation: pure metric functions (trajectories, dynamic masks, depth, 4D points) and trajectory I/O.

Each metric names its alignment and averaging convention, so that numbers from different conventions
are never compared by accident; see :mod:`easi3r.eval.metrics`.
"""
