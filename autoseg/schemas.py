"""JSON Schemas of plan.json, fingerprint.json, the preprocessed cases' properties, postprocessing.json, the
per-case prediction report and a training run's recipe.json,
derived from the dataclasses.

`python -m autoseg.schemas plans/` rewrites the committed copies; a test fails when they
fall out of date.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from autoseg.fingerprint import Fingerprint
from autoseg.inference.report import CaseReport
from autoseg.jsonio import json_schema, write_text_atomic
from autoseg.planning.plan_types import Plan
from autoseg.postprocessing import Postprocessing
from autoseg.quality import DatasetReport
from autoseg.preprocessing.properties import CaseProperties
from autoseg.training.recipe import Recipe

SCHEMA_FILES = {"schema.json": (Plan, "autoseg plan.json"),
                "fingerprint.schema.json": (Fingerprint, "autoseg fingerprint.json"),
                "properties.schema.json": (CaseProperties, "autoseg preprocessed case properties"),
                "postprocessing.schema.json": (Postprocessing, "autoseg postprocessing.json"),
                "case_report.schema.json": (CaseReport, "autoseg per-case prediction report"),
                "recipe.schema.json": (Recipe, "autoseg training recipe.json"),
                "dataset_report.schema.json": (DatasetReport, "autoseg dataset_report.json")}


def schemas() -> dict[str, dict]:
    return {name: json_schema(cls, title) for name, (cls, title) in SCHEMA_FILES.items()}


def write_schemas(folder: str | Path) -> None:
    for name, schema in schemas().items():
        write_text_atomic(Path(folder) / name, json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    write_schemas(sys.argv[1] if len(sys.argv) > 1 else "plans")
