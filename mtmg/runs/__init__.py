"""Runs: profiles, the stages and the pipeline that runs them into the run store.

Imports every package below it; never mtmg.book or mtmg.cli.
"""
