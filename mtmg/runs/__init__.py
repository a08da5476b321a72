"""Runs: profiles, the stage registry and the pipeline that runs the stages (the probe stage included)
into the run store.

Imports every package below it; never mtmg.book or mtmg.cli.
"""
