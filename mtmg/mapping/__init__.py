"""Mapping a user's own Sentinel-2 scene: encoders from a profile's finished runs, the zero-shot map, text and
example search over the scene's windows, and the files they write (GeoTIFF, CSV, GeoJSON, thumbnails).

Sits beside mtmg.book, above mtmg.runs: imports mtmg.runs and every package below it; never mtmg.book or
mtmg.cli (the maps' colours are the caller's: the command line and the book pass the book's palette).
"""
