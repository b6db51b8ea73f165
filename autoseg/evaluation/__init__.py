"""Evaluation: overlap metrics per case and class."""
