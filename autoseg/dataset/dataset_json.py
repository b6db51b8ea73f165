"""dataset.json read field by field: every wrong type or value is one line naming the file and the
field's JSON path, and the other fields are still read (docs/reliability.md, "Datasets")."""
from __future__ import annotations

import json
import re
from pathlib import Path

from autoseg.label_scheme import IGNORE_NAME, LabelScheme, Region


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

    def label_value(self, where: str, value, *, region_allowed: bool = False) -> int | list[int] | None:
        """An integer label value, or (region_allowed) a list of them: a region."""
        if isinstance(value, list) and region_allowed:
            values = [self.label_value(f"{where}[{i}]", v) for i, v in enumerate(value)]
            if not value:
                self.bad(where, "a region needs at least one label value")
            elif any(v is None for v in values):
                return None
            elif 0 in values:
                self.bad(where, "a region cannot contain background (0)")
            elif len(set(values)) < len(values):
                self.bad(where, f"{describe_kind(value)} lists a value twice")
            else:
                return values
            return None
        if isinstance(value, list):
            self.bad(where, f"expected an integer label value, got {describe_kind(value)}")
        elif isinstance(value, bool) or not isinstance(value, int):
            self.bad(where, f"expected an integer label value{' or a list of them (a region)' if region_allowed else ''}"
                            f", got {describe_kind(value)}")
        elif value < 0:
            self.bad(where, f"label values must be 0 or more, got {value}")
        else:
            return value
        return None

    def nnunet_labels(self, meta: dict) -> LabelScheme | None:
        """`labels`: {name: value or [values] (a region)}, with `regions_class_order` when there are regions and
        an optional `ignore` label (nnU-Net v2's conventions). None when anything is wrong with them: label
        maps are then not checked against them (every case would repeat the one dataset.json problem)."""
        value = self.object(meta, "labels", '{"background": 0, "liver": 1}')
        if value is None:
            return None
        labels = {name: self.label_value(_key("labels", name), v, region_allowed=name != IGNORE_NAME)
                  for name, v in value.items()}
        if any(v is None for v in labels.values()):
            return None
        return self._scheme(labels, meta)

    def msd_labels(self, meta: dict) -> LabelScheme | None:
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
        return self._scheme(labels, meta) if usable else None

    def _scheme(self, declared: dict[str, int | list[int]], meta: dict) -> LabelScheme | None:
        """Checks the values together; None (after reporting) when label maps cannot be checked against them
        without each case repeating the same problem."""
        before = len(self.problems)
        ignore = declared.get(IGNORE_NAME)
        regions = [Region(n, list(v) if isinstance(v, list) else [v]) for n, v in declared.items()
                   if n != IGNORE_NAME and v != 0]
        uses_regions = any(isinstance(v, list) for v in declared.values())
        plain = {n: v for n, v in declared.items() if not isinstance(v, list)}
        by_value: dict[int, list[str]] = {}
        for name, v in (plain if not uses_regions else {n: v for n, v in plain.items()
                                                           if n == IGNORE_NAME or v == 0}).items():
            by_value.setdefault(v, []).append(name)
        for v, names in sorted(by_value.items()):
            if len(names) > 1:
                self.bad("labels", f"value {v} is declared twice ({', '.join(json.dumps(n) for n in names)})")
        if 0 not in declared.values():
            self.bad("labels", "background must be declared as 0")
        values = {0} | {v for r in regions for v in r.values}
        if ignore is not None:
            if any(v >= ignore for v in values):
                self.bad(_key("labels", IGNORE_NAME), f"the ignore label must be the highest value, got {ignore} "
                                                      f"(other values reach {max(values)})")
            values.add(ignore)
        gaps = [str(v) for v in range(max(values)) if v not in values]
        if gaps:
            self.bad("labels", f"label values must be consecutive 0..{max(values)}; missing {', '.join(gaps)}")
        order = meta.get("regions_class_order")
        labels = {n: v for n, v in plain.items() if n != IGNORE_NAME}
        if uses_regions:
            background = next((n for n, v in plain.items() if v == 0), "background")
            labels = self._region_order(regions, order, background)
        elif order is not None:
            self.bad("regions_class_order", "given, but no label is a region (a list of values); remove it, or "
                                            "declare the regions as lists")
        if len(self.problems) != before or labels is None:
            return None
        return LabelScheme(labels, regions if uses_regions else [], ignore)

    def _region_order(self, regions: list[Region], order, background: str) -> dict[str, int] | None:
        """{background: 0, region: its value in the label map}, from regions_class_order."""
        example = f"one value per region, e.g. {json.dumps(list(range(1, len(regions) + 1)))}"
        if order is None:
            self.bad("labels", f"regions (labels given as lists of values) need \"regions_class_order\": the value "
                               f"each region is written as in predicted label maps, {example}")
            return None
        if not isinstance(order, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in order):
            self.bad("regions_class_order", f"expected a list of positive integers, {example}; got "
                                            f"{describe_kind(order)}")
            return None
        if len(order) != len(regions):
            self.bad("regions_class_order", f"{len(order)} values for {len(regions)} regions "
                                            f"({', '.join(r.name for r in regions)}): {example}")
            return None
        if len(set(order)) < len(order):
            self.bad("regions_class_order", f"{json.dumps(order)} writes two regions as the same value")
            return None
        for i, inner in enumerate(regions):
            for outer in regions[i + 1:]:
                if set(inner.values) == set(outer.values):
                    self.bad("labels", f"regions {json.dumps(inner.name)} and {json.dumps(outer.name)} are the same "
                                       f"values {sorted(inner.values)}")
                    return None
                if set(inner.values) < set(outer.values):
                    self.bad("labels", f"region {json.dumps(inner.name)} {inner.values} lies inside "
                                       f"{json.dumps(outer.name)} {outer.values}, which comes after it and would "
                                       f"overwrite it in every label map; list regions from the outermost in")
                    return None
        return {background: 0, **{r.name: v for r, v in zip(regions, order)}}

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
