"""The book's code: figures, report tables and text, views of runs for the chapters, teaching helpers, the notebook runner.

Imports anything but mtmg.cli; nothing of the method imports it.
"""
