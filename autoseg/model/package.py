"""One-file model packages: everything prediction needs, nothing else, checksummed, never executable.

A package is a zip archive (stored, not compressed: weights do not compress and reading stays fast):

    package.json                      PackageInfo: format version, autoseg version, configurations, folds
    plans/<configuration>.json        the plan each configuration was trained from
    weights/<configuration>/fold_<k>.pt   a bare state dict (float32, or float16 with --half)
    postprocessing.json               the postprocessing to apply (optional)
    training_summary.json             what the training scans looked like, for the input checks
    model_card.json, model_card.md    dataset, training cases, cross-validation Dice, description
    manifest.json                     sha256 of every other member

Reading checks the manifest first (every member listed, present, unchanged; nothing extra), then the
versions, and loads weights with torch's weights-only unpickler, so a package cannot run code.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from autoseg import __version__
from autoseg.errors import AutosegError
from autoseg.fingerprint import load_fingerprint
from autoseg.jsonio import atomic_path, from_dict, json_safe, remove_dead_temps, to_dict
from autoseg.label_scheme import Region
from autoseg.output_location import check_free_space, check_output_file
from autoseg.model.checkpoint import FINAL, read_fold_weights
from autoseg.model.input_checks import TrainingSummary, training_summary
from autoseg.model.trained import (ModelSet, TrainedModel, default_configuration, network_from_weights,
                                   read_inference_choice, trained_folds)
from autoseg.planning.plan_types import PLAN_VERSION, Plan, load_plan
from autoseg.postprocessing import Postprocessing, load_postprocessing

PACKAGE_FORMAT_VERSION = 1
PACKAGE_SUFFIX = ".autoseg"
MANIFEST = "manifest.json"
INFO = "package.json"
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
SUMMARY = "training_summary.json"
POSTPROCESSING = "postprocessing.json"
VALIDATION_SUMMARY = "validation/summary.json"  # written by training's end-of-training validation


@dataclass
class PackagedConfiguration:
    name: str
    folds: list[str]
    in_channels: int
    num_classes: int
    previous_stage: str | None = None  # the cascade's first stage, packaged alongside


@dataclass
class ModelCard:
    dataset_name: str
    num_training_cases: int
    configurations: list[str]  # predicted together (several: an ensemble)
    folds: list[str]
    labels: dict[str, int]
    channel_names: dict[str, str]
    orientation: str
    # per configuration: mean Dice per foreground label over its folds' validation cases (null: not validated)
    cross_validation_dice: dict[str, dict[str, float | None]]
    autoseg_version: str
    created: str
    description: str = ""
    weights_dtype: str = "float32"
    # per "<configuration> fold <k>": how it was trained (its recipe.json in one line; the file is packed too)
    training_recipes: dict[str, str] = field(default_factory=dict)
    regions: list[Region] = field(default_factory=list)  # region-based: each label's region, written in order
    ignore_label: int | None = None  # trained on sparse labels: this value marked unannotated voxels


@dataclass
class PackageInfo:
    format_version: int
    autoseg_version: str
    plan_version: int
    configurations: list[str]  # what predict uses, in order (several: an ensemble)
    packaged: list[PackagedConfiguration] = field(default_factory=list)  # including cascade first stages


def _weights_member(configuration: str, fold: str) -> str:
    return f"weights/{configuration}/fold_{fold}.pt"


def _recipe_member(configuration: str, fold: str) -> str:
    return f"recipes/{configuration}/fold_{fold}.json"


def _recipe_line(recipe_json: bytes) -> str:
    """One line from a fold's recipe.json (read as plain JSON: the training layer sits above this one)."""
    try:
        r = json.loads(recipe_json)
        return (f"{r['name']} recipe, width {r['width']:g} (features {r['features_per_stage']}), batch {r['batch_size']}, "
                f"{r.get('optimizer', 'sgd')} lr {r['initial_lr']:g}, {r['augmentation']} augmentation; {r['reason']}")
    except (ValueError, KeyError, TypeError):
        return "recipe.json unreadable"


def _plan_member(configuration: str) -> str:
    return f"plans/{configuration}.json"


def _json_bytes(obj) -> bytes:
    return (json.dumps(json_safe(to_dict(obj)), indent=2) + "\n").encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ExportOptions:
    configuration: str | None = None  # None: find-best's choice, else the only / 3d_fullres configuration
    folds: list[str] | None = None  # None: every finished fold
    half: bool = False  # float16 weights: half the size; predictions computed in float32 as always
    description: str = ""


def export_package(output_dir, package_path, options: ExportOptions | None = None) -> ModelCard:
    """Pack a training folder's model(s) into one file; returns the model card written into it."""
    options = options or ExportOptions()
    output_dir = Path(output_dir)
    models_dir = output_dir / "models"
    package_path = Path(package_path)
    check_output_file(package_path, what="model package")
    if not models_dir.is_dir():
        raise AutosegError(f"{output_dir}: no models/ folder (train a model first)")
    choice = read_inference_choice(models_dir) if options.configuration is None else None
    if choice is not None:
        configurations, postprocessing = choice
    else:
        configuration = options.configuration or default_configuration(models_dir)
        configurations, postprocessing = [configuration], load_postprocessing(models_dir / configuration)

    members: dict[str, bytes] = {}
    recipes: dict[str, str] = {}
    packaged: list[PackagedConfiguration] = []
    plans: dict[str, Plan] = {}

    def add_configuration(name: str, folds) -> None:
        if any(p.name == name for p in packaged):
            return
        available = trained_folds(models_dir, name)
        chosen = [str(f) for f in folds] if folds is not None else available
        if not chosen:
            raise AutosegError(f"{models_dir / name}: no fold has finished training ({FINAL} missing)")
        missing = [f for f in chosen if f not in available]
        if missing:
            raise AutosegError(f"{models_dir / name / ('fold_' + missing[0])}: fold {missing[0]} has no {FINAL}")
        plan = load_plan(models_dir / name / f"fold_{chosen[0]}" / "plan.json")
        plans[name] = plan
        members[_plan_member(name)] = _json_bytes(plan)
        in_channels = num_classes = 0
        for fold in chosen:
            weights = read_fold_weights(models_dir / name / f"fold_{fold}" / FINAL)
            state = {k: (v.half() if options.half and v.is_floating_point() else v).contiguous()
                     for k, v in weights.state_dict.items()}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            members[_weights_member(name, fold)] = buffer.getvalue()
            recipe_path = models_dir / name / f"fold_{fold}" / "recipe.json"
            if recipe_path.is_file():  # folds trained before recipes existed have none
                members[_recipe_member(name, fold)] = recipe_path.read_bytes()
                recipes[f"{name} fold {fold}"] = _recipe_line(members[_recipe_member(name, fold)])
            in_channels, num_classes = weights.in_channels, weights.num_classes
        previous = plan.configurations[name].previous_stage
        packaged.append(PackagedConfiguration(name, chosen, in_channels, num_classes, previous))
        if previous:
            add_configuration(previous, chosen)

    for name in configurations:
        add_configuration(name, options.folds)
    plan = plans[configurations[0]]
    if postprocessing is not None:
        members[POSTPROCESSING] = _json_bytes(postprocessing)
    num_cases = 0
    fingerprint_path = output_dir / "fingerprint.json"
    if fingerprint_path.is_file():
        fingerprint = load_fingerprint(fingerprint_path)
        num_cases = len(fingerprint.cases)
        members[SUMMARY] = _json_bytes(training_summary(fingerprint, plan))
    card = ModelCard(
        dataset_name=plan.dataset_name, num_training_cases=num_cases, configurations=list(configurations),
        folds=next(p.folds for p in packaged if p.name == configurations[0]), labels=dict(plan.labels),
        channel_names=dict(plan.channel_names), orientation=plan.orientation,
        cross_validation_dice={name: cross_validation_dice(models_dir, name, p.folds, plan)
                               for p in packaged for name in [p.name] if name in configurations},
        autoseg_version=__version__, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        description=options.description, weights_dtype="float16" if options.half else "float32",
        training_recipes=recipes, regions=list(plan.regions), ignore_label=plan.ignore_label)
    members[CARD_JSON] = _json_bytes(card)
    members[CARD_MD] = format_card(card).encode()
    info = PackageInfo(PACKAGE_FORMAT_VERSION, __version__, PLAN_VERSION, list(configurations), packaged)
    members[INFO] = _json_bytes(info)
    manifest = {"format_version": PACKAGE_FORMAT_VERSION,
                "members": {name: sha256_bytes(data) for name, data in sorted(members.items())}}
    check_free_space(package_path, what="model package", expected_bytes=sum(len(d) for d in members.values()))
    remove_dead_temps(package_path)
    with atomic_path(package_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in sorted(members.items()):
                archive.writestr(name, data)
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return card


def cross_validation_dice(models_dir: Path, configuration: str, folds, plan: Plan) -> dict[str, float | None]:
    """Mean Dice per foreground label over every validation case of the given folds (pooled, so folds with
    more cases weigh more); None where no fold was validated or the label never occurred."""
    per_label: dict[str, list[float]] = {name: [] for name, value in plan.labels.items() if value > 0}
    for fold in folds:
        path = models_dir / configuration / f"fold_{fold}" / VALIDATION_SUMMARY
        if not path.is_file():
            continue
        try:
            cases = json.loads(path.read_text())["cases"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AutosegError(f"{path}: not a validation summary (rerun training's validation)") from None
        for case in cases:
            for name in per_label:
                value = case.get("dice", {}).get(name)
                if isinstance(value, (int, float)) and not math.isnan(value):
                    per_label[name].append(float(value))
    return {name: (sum(v) / len(v) if v else None) for name, v in per_label.items()}


def format_card(card: ModelCard) -> str:
    """The model card as Markdown (what `autoseg info` prints)."""
    lines = [f"# autoseg model: {card.dataset_name}", ""]
    if card.description:
        lines += [card.description, ""]
    lines += [f"- configuration(s): {' + '.join(card.configurations)}"
              + (" (ensemble of their probabilities)" if len(card.configurations) > 1 else ""),
              f"- folds: {', '.join(card.folds)}",
              f"- training cases: {card.num_training_cases or 'unknown'}",
              f"- input channels: {', '.join(f'{k}: {v}' for k, v in card.channel_names.items())}",
              f"- labels: {', '.join(f'{v} {k}' for k, v in sorted(card.labels.items(), key=lambda kv: kv[1]))}",
              *([f"- regions (one sigmoid each; label maps write them in this order, later over earlier): "
                 + ", ".join(f"{r.name} = values {r.values}, written as {card.labels[r.name]}" for r in card.regions)]
                if card.regions else []),
              *([f"- trained on sparse labels (value {card.ignore_label} marked unannotated voxels); predictions are "
                 f"dense"] if card.ignore_label is not None else []),
              f"- voxel orientation used inside the model: {card.orientation} (any input orientation is accepted)",
              f"- weights: {card.weights_dtype}",
              f"- autoseg {card.autoseg_version}, created {card.created}", "",
              "## Cross-validation Dice (mean over validation cases)", "",
              "| configuration | " + " | ".join(n for n, v in sorted(card.labels.items(), key=lambda kv: kv[1]) if v > 0)
              + " |",
              "|---|" + "---|" * sum(1 for v in card.labels.values() if v > 0)]
    for configuration, dice in card.cross_validation_dice.items():
        cells = ["n/a" if dice.get(n) is None else f"{dice[n]:.3f}"
                 for n, v in sorted(card.labels.items(), key=lambda kv: kv[1]) if v > 0]
        lines.append(f"| {configuration} | " + " | ".join(cells) + " |")
    if card.training_recipes:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in card.training_recipes.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class PackageContents:
    path: Path
    sha256: str
    info: PackageInfo
    card: ModelCard
    members: dict[str, bytes]


def is_package(path) -> bool:
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def read_package(path) -> PackageContents:
    """Read and verify a package; every problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: model package not found")
    with open(path, "rb") as f:
        starts_like_zip = f.read(4) == b"PK\x03\x04"
    if not starts_like_zip:
        raise AutosegError(f"{path}: not a model package (expected a file made by autoseg export)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts or "\\" in name:
                    raise AutosegError(f"{path}: not a valid model package (member {name!r} would escape its folder)")
            if MANIFEST not in names:
                raise AutosegError(f"{path}: not an autoseg model package, or a truncated one (no {MANIFEST})")
            members = {name: archive.read(name) for name in names}
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, ValueError, NotImplementedError) as e:
        raise AutosegError(f"{path}: not a readable model package (truncated or damaged: {e})") from None
    try:
        manifest = json.loads(members.pop(MANIFEST))
        listed = dict(manifest["members"])
        format_version = manifest["format_version"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise AutosegError(f"{path}: damaged model package ({MANIFEST} unreadable)") from None
    if format_version != PACKAGE_FORMAT_VERSION:
        raise AutosegError(f"{path}: package format {format_version!r} is not supported by autoseg {__version__} "
                           f"(reads format {PACKAGE_FORMAT_VERSION}); export it again with this version")
    extra = sorted(set(members) - set(listed))
    missing = sorted(set(listed) - set(members))
    if missing:
        raise AutosegError(f"{path}: damaged model package ({missing[0]} is missing)")
    if extra:
        raise AutosegError(f"{path}: tampered model package ({extra[0]} is not in the manifest)")
    for name, digest in listed.items():
        if sha256_bytes(members[name]) != digest:
            raise AutosegError(f"{path}: tampered or damaged model package ({name} does not match its checksum)")
    try:
        info = from_dict(PackageInfo, json.loads(members[INFO]), where=f"{path}:{INFO}")
        card = from_dict(ModelCard, json.loads(members[CARD_JSON]), where=f"{path}:{CARD_JSON}")
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise AutosegError(f"{path}: damaged model package ({INFO} or {CARD_JSON} unreadable)") from None
    if info.format_version != PACKAGE_FORMAT_VERSION or info.plan_version != PLAN_VERSION:
        raise AutosegError(f"{path}: made by autoseg {info.autoseg_version} with plan version {info.plan_version}; "
                           f"this autoseg {__version__} reads plan version {PLAN_VERSION}: export it again")
    return PackageContents(path, file_sha256(path), info, card, members)


def load_package(path, device: torch.device = torch.device("cpu")) -> ModelSet:
    """A verified package's models, ready to predict (weights as float32 whatever was stored)."""
    contents = read_package(path)
    members = contents.members
    by_name = {p.name: p for p in contents.info.packaged}

    def load(name: str) -> TrainedModel:
        if name not in by_name:
            raise AutosegError(f"{path}: damaged model package (configuration {name} is not packaged)")
        packaged = by_name[name]
        plan = from_dict(Plan, json.loads(members[_plan_member(name)]), where=f"{path}:{_plan_member(name)}")
        networks = []
        for fold in packaged.folds:
            member = _weights_member(name, fold)
            if member not in members:
                raise AutosegError(f"{path}: damaged model package ({member} is missing)")
            state = _read_weights(path, member, members[member])
            networks.append(network_from_weights(plan, name, state, packaged.in_channels, packaged.num_classes,
                                                 device))
        previous = load(packaged.previous_stage) if packaged.previous_stage else None
        return TrainedModel(plan, name, networks, previous, list(packaged.folds), packaged.in_channels, None)

    models = [load(name) for name in contents.info.configurations]
    postprocessing = None
    if POSTPROCESSING in members:
        postprocessing = from_dict(Postprocessing, json.loads(members[POSTPROCESSING]),
                                   where=f"{path}:{POSTPROCESSING}")
    summary: TrainingSummary | None = None
    if SUMMARY in members:
        summary = from_dict(TrainingSummary, json.loads(members[SUMMARY]), where=f"{path}:{SUMMARY}")
    return ModelSet(models, postprocessing, str(Path(path).resolve()), contents.sha256, summary)


def _read_weights(path, member: str, data: bytes) -> dict[str, torch.Tensor]:
    """A state dict through torch's weights-only unpickler (tensors and plain containers, never code), as float32."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler refuses anything but tensors
        raise AutosegError(f"{path}: {member} is not a plain weights file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AutosegError(f"{path}: {member} is not a plain weights file (not a dict of tensors)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def model_card_text(path) -> str:
    """`autoseg info`: the verified package's card (every weights member is read too, so a package that
    passes here also loads)."""
    contents = read_package(path)
    for name, data in contents.members.items():
        if name.startswith("weights/"):
            _read_weights(path, name, data)
    return contents.members[CARD_MD].decode() + f"\npackage sha256: {contents.sha256}\n"
