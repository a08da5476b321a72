"""The book's code: figures, report tables and text, views of runs for the chapters, teaching helpers, the notebook runner.

Imports every package below it (mtmg.core to mtmg.runs), never mtmg.cli or mtmg.mapping; only mtmg.cli
imports it. The layers: book/extending.md, checked by tests/test_import_graph.py.
"""
