"""Models: CLIP loading (open_clip), zero-shot heads, the 13-band student.

Imports only mtmg.core.
"""
