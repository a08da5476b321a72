"""Evaluation: metrics, embedding extraction, zero-shot scoring, the modality gap, linear probes.

Imports mtmg.core, mtmg.models.clip and mtmg.data.
"""
