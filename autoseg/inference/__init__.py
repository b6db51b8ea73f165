"""Inference: sliding-window prediction on preprocessed cases."""
