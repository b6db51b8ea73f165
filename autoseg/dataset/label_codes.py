"""Coded names of the labels (optional `label_codes` in dataset.json), for DICOM SEG's segment descriptions:
a viewer or PACS knows what a segment is from its SNOMED CT (or other) category and type codes, not from
its free-text label (docs/dicom.md, "Label codes").

    "label_codes": {"hippocampus_anterior": {
        "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "value": "5001007", "meaning": "Hippocampus"}}}
"""
from __future__ import annotations

from dataclasses import dataclass

from autoseg.dataset.dataset_json import JsonFields, describe_kind


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator (e.g. SCT), code value and code meaning."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class LabelCode:
    category: Code  # SegmentedPropertyCategoryCodeSequence, e.g. Anatomical Structure
    type: Code  # SegmentedPropertyTypeCodeSequence, e.g. Liver


# For labels without codes: what any segment is at least. Documented in docs/dicom.md.
GENERIC_LABEL_CODE = LabelCode(Code("SCT", "85756007", "Tissue"), Code("SCT", "85756007", "Tissue"))


def read_label_codes(f: JsonFields, meta: dict, labels: dict[str, int] | None) -> dict[str, LabelCode]:
    """dataset.json's `label_codes`, each wrong entry one problem in `f`; foreground labels only."""
    value = meta.get("label_codes")
    if value is None:
        return {}
    if not isinstance(value, dict):
        f.bad("label_codes", f"expected an object {{label name: {{category, type}}}}, got {describe_kind(value)}")
        return {}
    codes = {}
    for name, entry in value.items():
        where = f"label_codes[\"{name}\"]"
        if labels is not None and name not in labels:
            f.bad(where, "not a label declared in labels")
            continue
        if labels is not None and labels[name] == 0:
            f.bad(where, "the background has no segment to code")
            continue
        if not isinstance(entry, dict) or set(entry) != {"category", "type"}:
            f.bad(where, "expected {\"category\": {scheme, value, meaning}, \"type\": {scheme, value, meaning}}")
            continue
        parts = {key: _code(f, f"{where}.{key}", entry[key]) for key in ("category", "type")}
        if None not in parts.values():
            codes[name] = LabelCode(parts["category"], parts["type"])
    return codes


def _code(f: JsonFields, where: str, entry) -> Code | None:
    if not isinstance(entry, dict) or set(entry) != {"scheme", "value", "meaning"}:
        f.bad(where, 'expected {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}')
        return None
    if not all(isinstance(v, str) and v.strip() for v in entry.values()):
        f.bad(where, "scheme, value and meaning must be non-empty strings")
        return None
    if len(entry["value"]) > 64 or len(entry["meaning"]) > 64 or len(entry["scheme"]) > 16:
        f.bad(where, "DICOM allows at most 16 characters of scheme, 64 of value and of meaning")
        return None
    return Code(entry["scheme"], entry["value"], entry["meaning"])
