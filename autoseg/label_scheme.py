"""What a model's outputs mean, shared by every step from the dataset to the metrics.

Two kinds of target, as in nnU-Net v2's dataset.json:

- classes (the default): every label value is one class; the network has one output per value,
  background included, trained with softmax (Dice + cross-entropy), and the label map is the argmax.
- regions: a label may be a list of values (BraTS: whole tumour [1, 2, 3] contains tumour core [2, 3]
  contains enhancing tumour [3]); the network has one sigmoid output per region, trained with Dice +
  binary cross-entropy, and the label map is built by writing region after region, in dataset.json's
  order, each with its value from `regions_class_order` (later regions overwrite earlier ones, so a
  region nested in another must come after it).

Either may have an `ignore` label (sparse annotation): its voxels are unannotated. They count nowhere,
in the loss, the sampler's foreground guarantee, validation and evaluation; prediction stays dense.

Region and class targets are both scored the same way (nnU-Net's convention): a target's mask in a
label map is the voxels holding any of its values, in the prediction and the reference alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_NAME = "ignore"


@dataclass
class Region:
    name: str
    values: list[int]  # the label-map values the region is made of


@dataclass(frozen=True)
class Target:
    """One foreground output as it is scored: a name and the label-map values that make its mask."""

    name: str
    values: tuple[int, ...]

    @property
    def key(self) -> str:
        """How evaluation names it: the label value, or the region's values joined by '+'."""
        return "+".join(str(v) for v in self.values)


@dataclass
class LabelScheme:
    # output label map: name -> value, background 0; for regions, each region's regions_class_order value
    labels: dict[str, int]
    regions: list[Region] = field(default_factory=list)  # in writing order; empty: classes
    ignore_label: int | None = None

    @classmethod
    def of(cls, holder) -> "LabelScheme":
        """The scheme of anything carrying labels, regions and ignore_label (dataset, fingerprint, plan)."""
        return cls(dict(holder.labels), list(holder.regions), holder.ignore_label)

    @property
    def uses_regions(self) -> bool:
        return bool(self.regions)

    @property
    def output_channels(self) -> int:
        """The network's outputs: one per region, or one per class with background."""
        return len(self.regions) if self.regions else len(self.labels)

    @property
    def targets(self) -> list[Target]:
        """Foreground outputs in output order (regions) or by value (classes)."""
        if self.regions:
            return [Target(r.name, tuple(r.values)) for r in self.regions]
        return [Target(name, (value,)) for name, value in sorted(self.labels.items(), key=lambda kv: kv[1])
                if value > 0]

    @property
    def output_values(self) -> list[int]:
        """The value each output channel is written as: regions in order, or the classes' values sorted."""
        if self.regions:
            return [self.labels[r.name] for r in self.regions]
        return sorted(self.labels.values())

    @property
    def annotated_values(self) -> list[int]:
        """Every value a reference label map may hold: background, the foreground values, the ignore label."""
        values = {0} | {v for t in self.targets for v in t.values}
        if self.ignore_label is not None:
            values.add(self.ignore_label)
        return sorted(values)

    @property
    def foreground_values(self) -> list[int]:
        """Annotated foreground values the sampler may centre on (never the ignore label)."""
        return sorted({v for t in self.targets for v in t.values})

    def label_map(self, scores: np.ndarray, *, probabilities: bool = False) -> np.ndarray:
        """(outputs, ...) logits (or probabilities) -> label map: argmax over classes, or regions written in
        order where their sigmoid exceeds one half (logit above 0)."""
        values = np.asarray(self.output_values)
        dtype = np.uint8 if values.max(initial=0) < 256 and values.min(initial=0) >= 0 else np.int16
        if not self.regions:
            return values.astype(dtype)[np.asarray(scores).argmax(0)]
        out = np.zeros(np.shape(scores)[1:], dtype)
        threshold = 0.5 if probabilities else 0.0
        for channel, value in zip(scores, values):
            out[np.asarray(channel) > threshold] = value
        return out


def as_targets(labels) -> list[Target]:
    """Label values (each its own target) or Targets -> Targets."""
    return [t if isinstance(t, Target) else Target(str(int(t)), (int(t),)) for t in labels]


def parse_target(text: str) -> Target:
    """'2' or a region's values '1,2,3' (or '1+2+3') -> a Target, for command lines."""
    values = tuple(int(v) for v in text.replace("+", ",").split(",") if v.strip())
    if not values:
        raise ValueError(f"{text!r}: expected a label value or values joined by ',' (a region)")
    return Target("+".join(str(v) for v in values), values)


def target_mask(label_map: np.ndarray, target: Target) -> np.ndarray:
    return np.isin(label_map, target.values) if len(target.values) > 1 else label_map == target.values[0]

