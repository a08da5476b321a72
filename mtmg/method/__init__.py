"""The method: losses, the training loop, stage 1 patching (PAINT), stage 2 cross-modal alignment, MiniCLIP
pretraining and the CLIP a config names.

Imports mtmg.core, mtmg.models, mtmg.data and mtmg.evaluation; never mtmg.runs or mtmg.book.
"""
