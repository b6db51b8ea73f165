"""Preprocessing: plan -> training-ready cases, and restore(), its inverse for prediction."""
from autoseg.preprocessing.case import preprocess_case, restore_label, restore_probabilities, write_like_source
from autoseg.preprocessing.run import preprocess_dataset

__all__ = ["preprocess_case", "preprocess_dataset", "restore_label", "restore_probabilities", "write_like_source"]
