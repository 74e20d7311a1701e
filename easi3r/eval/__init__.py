"""Evaluation: metric functions (:mod:`easi3r.eval.metrics`), benchmark dataset readers
(:mod:`easi3r.eval.datasets`) and the ``easi3r eval`` runner (:mod:`easi3r.eval.runner`).

Each metric names its alignment and averaging convention, so that numbers from different conventions
are never compared by accident.
"""
