"""Datasets on disk: layouts (nnU-Net raw, Medical Segmentation Decathlon), image I/O, validation."""
from autoseg.dataset.image_io import Geometry, read_image
from autoseg.dataset.layout import Case, Dataset, load_dataset
from autoseg.dataset.validation import CaseData, read_case

__all__ = ["Case", "CaseData", "Dataset", "Geometry", "load_dataset", "read_case", "read_image"]
