"""Evaluation: metrics and the headline metric, embedding a dataset, zero-shot scoring, the modality gap,
linear probes.

Imports mtmg.core, mtmg.models and mtmg.data.
"""
