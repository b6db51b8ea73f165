"""Inference: sliding-window prediction on preprocessed cases."""

OUTPUT_TYPES = ("auto", "nifti", "dicom-seg", "both")  # auto: dicom-seg for DICOM input, else the label map
INPUT_FORMATS = ("auto", "files", "dicom")  # auto: DICOM when the folder holds DICOM files and no image files
