"""Evaluation plugins: out-of-distribution sets, feature extractors and end-of-run plots."""
