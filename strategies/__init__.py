"""Built-in swappable stages: capture, mask rules, refiners, thresholds, re-weighting, aligners, exporters."""
