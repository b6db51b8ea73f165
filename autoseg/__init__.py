"""autoseg: self-configuring 3D medical image segmentation.

    from autoseg import Predictor      # the Python API of prediction (autoseg/inference/predictor.py)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Predictor pulls in torch; `import autoseg` (the CLI, the version) should not.
    if name == "Predictor":
        from autoseg.inference.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'autoseg' has no attribute {name!r}")


__all__ = ["Predictor", "__version__"]
