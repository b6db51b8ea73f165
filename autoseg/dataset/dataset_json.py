"""dataset.json read field by field: every wrong type or value is one line naming the file and the
field's JSON path, and the other fields are still read (docs/reliability.md, "Datasets")."""
from __future__ import annotations

import json
import re
from pathlib import Path


def describe_kind(value) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{json.dumps(value)} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(name: str, key: str) -> str:
    return f"{name}[{json.dumps(key)}]"


class JsonFields:
    """Typed reads of dataset.json; each wrong field is one line `dataset.json: JSON.PATH: what is wrong`."""

    def __init__(self, meta_path: Path):
        self.meta_path = meta_path
        self.problems: list[str] = []

    def bad(self, where: str, text: str) -> None:
        self.problems.append(f"{self.meta_path}: {where}: {text}")

    def require(self, meta: dict, keys) -> bool:
        missing = [k for k in keys if k not in meta]
        for k in missing:
            self.problems.append(f"{self.meta_path}: missing key '{k}'")
        return not missing

    def object(self, meta: dict, key: str, example: str) -> dict | None:
        value = meta[key]
        if not isinstance(value, dict):
            self.bad(key, f"expected an object like {example}, got {describe_kind(value)}")
            return None
        return value

    def channels(self, meta: dict, key: str) -> dict[str, str] | None:
        """`channel_names` / `modality`: {"0": name, ..., "C-1": name}. None when the count is unknown."""
        value = self.object(meta, key, '{"0": "CT"}')
        if value is None:
            return None
        if not value:
            self.bad(key, "no channels declared")
            return None
        indices = {}
        for k, name in value.items():
            if not (k.isdigit() and k.isascii() and str(int(k)) == k):
                self.bad(_key(key, k), "channel keys must be the numbers 0..N-1 as strings (\"0\", \"1\", ...)")
            else:
                indices[int(k)] = k
            if not isinstance(name, str) or not name.strip():
                self.bad(_key(key, k), f"expected the channel's modality name (e.g. \"CT\"), got {describe_kind(name)}")
        if len(indices) != len(value):
            return None
        missing = [str(i) for i in range(len(value)) if i not in indices]
        if missing:
            self.bad(key, f"channel keys must be 0..{len(value) - 1} without gaps; missing "
                          + ", ".join(json.dumps(m) for m in missing))
            return None
        return {str(i): str(value[indices[i]]) for i in range(len(value))}

    def label_value(self, where: str, value) -> int | None:
        if isinstance(value, list):
            self.bad(where, f"{describe_kind(value)} of values is a region; only integer labels are supported "
                            f"(region-based training is not)")
        elif isinstance(value, bool) or not isinstance(value, int):
            self.bad(where, f"expected an integer label value, got {describe_kind(value)}")
        elif value < 0:
            self.bad(where, f"label values must be 0 or more, got {value}")
        else:
            return value
        return None

    def nnunet_labels(self, meta: dict) -> dict[str, int] | None:
        """`labels`: {name: value}. None when anything is wrong with them: label maps are then not checked
        against them (every case would repeat the one dataset.json problem)."""
        value = self.object(meta, "labels", '{"background": 0, "liver": 1}')
        if value is None:
            return None
        labels = {name: self.label_value(_key("labels", name), v) for name, v in value.items()}
        if any(v is None for v in labels.values()) or not self._label_set(labels):
            return None
        return labels

    def msd_labels(self, meta: dict) -> dict[str, int] | None:
        """MSD `labels`: {"value": name}, turned into {name: value}."""
        value = self.object(meta, "labels", '{"0": "background", "1": "liver"}')
        if value is None:
            return None
        labels: dict[str, int] = {}
        usable = True
        for k, name in value.items():
            where = _key("labels", k)
            number = int(k) if re.fullmatch(r"-?[0-9]+", k) else None
            if number is None:
                self.bad(where, "label keys must be integer values as strings (\"0\", \"1\", ...)")
                usable = False
            elif number < 0:
                self.bad(where, f"label values must be 0 or more, got {number}")
                usable = False
            if not isinstance(name, str) or not name.strip():
                self.bad(where, f"expected the label's name, got {describe_kind(name)}")
                usable = False
                continue
            if name in labels:
                self.bad("labels", f"name {json.dumps(name)} is used for two values")
                usable = False
            elif number is not None:
                labels[name] = number
        if not usable or not self._label_set(labels):
            return None
        return labels

    def _label_set(self, labels: dict[str, int]) -> bool:
        """Checks the values together; False (after reporting) when label maps cannot be checked against them
        without each case repeating the same problem."""
        before = len(self.problems)
        by_value: dict[int, list[str]] = {}
        for name, v in labels.items():
            by_value.setdefault(v, []).append(name)
        for v, names in sorted(by_value.items()):
            if len(names) > 1:
                self.bad("labels", f"value {v} is declared twice ({', '.join(json.dumps(n) for n in names)})")
        if 0 not in by_value:
            self.bad("labels", "background must be declared as 0")
        gaps = [str(v) for v in range(max(by_value, default=0)) if v not in by_value and v != 0]
        if gaps:
            self.bad("labels", f"label values must be consecutive 0..{max(by_value)}; missing {', '.join(gaps)}")
        return len(self.problems) == before

    def count(self, meta: dict, key: str) -> int | None:
        if key not in meta:
            return None
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.bad(key, f"expected a whole number of cases, got {describe_kind(value)}")
            return None
        return value

    def name(self, meta: dict, root: Path) -> str:
        value = meta.get("name")
        if value is None:
            return root.name
        if not isinstance(value, str):
            self.bad("name", f"expected a string, got {describe_kind(value)}")
            return root.name
        return value or root.name
