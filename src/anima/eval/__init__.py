"""Evaluation harnesses: generated videos scored against exact ground truth.

`anima.eval.levitor`: LeviTor and its ablations on toy-world clips (the paper's Table 2).
"""
