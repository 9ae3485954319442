"""Training side: datasets, the supervised core, unsupervised adaptation, evaluation.

Never imported by `serving` (a server image ships no generator, perceptual network or data readers).
"""
