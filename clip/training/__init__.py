"""Training of CLIP: loss, optimizer, precision, replicas, checkpoints, logs and the loop.

The entry point is ``python -m clip.train``; :func:`clip.training.loop.train` runs one
replica.
"""
