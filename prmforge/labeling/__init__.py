"""Step labelling: Monte Carlo estimation, judges, consensus filtering and the oracle audit.

Pure Python (no dagster): ``assets/labels.py`` is the thin Dagster layer on top.
"""
