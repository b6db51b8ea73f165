"""The import graph runs one way: dataset -> planning -> preprocessing -> model -> training | inference ->
evaluation -> faces (dicom, reading and writing DICOM, sits beside dataset). A module importing from a later layer (or training and inference importing each
other) fails here, naming the line."""
import re

from conftest import REPO

LAYER = {"errors": 0, "jsonio": 0, "allocator": 0, "resident_memory": 0, "parallel": 0, "overlap": 0, "label_scheme": 0, "crf": 0, "instances": 0, "output_location": 0, "dataset": 1, "dicom": 1, "fingerprint": 2, "quality": 2, "planning": 2,
         "postprocessing": 2, "preprocessing": 3, "model": 4, "training": 5, "inference": 5, "evaluation": 6,
         "schemas": 7, "serve": 7, "cli": 8, "cli_args": 8, "cli_train": 8, "__main__": 8, "__init__": 8, "demo": 0}
SIBLINGS = {("training", "inference"), ("inference", "training")}
IMPORT = re.compile(r"^\s*(?:from|import)\s+autoseg\.(\w+)", re.MULTILINE)


def _part(path) -> str:
    relative = path.relative_to(REPO / "autoseg")
    return relative.parts[0].removesuffix(".py")


def test_imports_point_down_the_layers_only():
    wrong = []
    for path in sorted((REPO / "autoseg").rglob("*.py")):
        own = _part(path)
        for target in IMPORT.findall(path.read_text()):
            if target == own:
                continue
            if LAYER[target] > LAYER[own] or (own, target) in SIBLINGS:
                wrong.append(f"{path.relative_to(REPO)} imports autoseg.{target}")
    assert not wrong, "\n".join(wrong)


def test_every_package_has_a_layer():
    parts = {_part(p) for p in (REPO / "autoseg").rglob("*.py")}
    assert parts <= set(LAYER), parts - set(LAYER)
