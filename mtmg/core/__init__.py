"""The ground floor: errors, paths, device and threads, typed configs, atomic checkpoints and the run store.

Imports nothing else of mtmg.
"""
