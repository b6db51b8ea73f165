"""What training and prediction share: network construction, weights from checkpoints and packages,
precision and device choice, the sliding window, and the path from probabilities to written label maps.

Both training/ and inference/ import from here; this package imports neither.
"""
