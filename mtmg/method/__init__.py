"""The method: losses, the training loop, stage 1 patching (PAINT), stage 2 cross-modal alignment, MiniCLIP pretraining.

Imports mtmg.core, mtmg.models.clip, mtmg.data and mtmg.evaluation.scoring; never mtmg.runs or mtmg.book.
"""
