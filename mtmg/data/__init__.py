"""Data: Sentinel-2 band orders and views, datasets, augmentation, prompts, synthetic scenes, task splits.

Imports mtmg.core and mtmg.models.
"""
