"""Bad-input corpus for `autoseg plan`: broken datasets in both layouts.

Every case builds a small dataset, breaks it, and runs `autoseg plan`. It must exit 1, print each
expected problem exactly once as one line naming its file, print nothing else but the count line
(last), and write nothing. Problems of different stages (dataset.json, files, voxels) show together.
"""
import json
import os
import shutil

import numpy as np
import pytest

from autoseg.cli import main
from conftest import run_autoseg, write_image, write_msd_dataset, write_nnunet_dataset

CORPUS_STAGE = "plan"
CORPUS_CLASSES = {
    "json-type": "A dataset.json field of the wrong type or value (a list for an object, a non-numeric or "
                 "gapped channel key, a boolean or fraction for an integer, duplicate, negative or missing "
                 "background labels) is refused with one line naming dataset.json and the field's JSON path.",
    "json-structure": "A missing, unparseable or keyless dataset.json (or a dataset path that is not a folder) "
                      "is refused with one line naming it.",
    "missing-file": "Missing image or label files and folders, and undeclared channels, are refused with one "
                    "line per file, the other cases still checked.",
    "ignored-file": "A file left out (another ending than file_ending, a hidden name, not an image) is named "
                    "with the reason, and a numTraining mismatch says what was ignored; macOS '._*' forks are "
                    "counted once, never named.",
    "msd-entry": "A Decathlon 'training' entry that is not an {image, label} object of relative paths, points "
                 "outside the dataset, repeats another entry or collides on a case id is refused with one line.",
    "voxels": "Voxel problems (NaN/Inf, undeclared or fractional labels, label grid unlike the image, wrong "
              "dimensionality or channel count, unreadable files) are one line per file.",
    "combined": "Problems of dataset.json, of the file listing and of the voxels are all reported in one run, "
                "sorted by file.",
}

SHAPE, SPACING = (12, 16, 14), (2.0, 1.0, 1.0)


# --- building blocks ------------------------------------------------------------------------------

def nnunet(tmp_path, **kw):
    return write_nnunet_dataset(tmp_path / "ds", n_cases=kw.pop("n_cases", 3), **kw)


def msd(tmp_path, **kw):
    return write_msd_dataset(tmp_path / "ds", n_cases=kw.pop("n_cases", 3), n_channels=kw.pop("n_channels", 2), **kw)


def edit_json(ds, change):
    meta = json.loads((ds / "dataset.json").read_text())
    change(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))


def setitem(key, value):
    def change(meta):
        meta[key] = value
    return change


def J(fragment):
    """A problem expected on dataset.json."""
    return ("dataset.json", fragment)


def nan_image(path, channels=1):
    image = np.ones((channels, *SHAPE) if channels > 1 else SHAPE, np.float32)
    image[..., 2, 3, 4] = np.nan
    write_image(path, image, SPACING)


def label_with(path, value, dtype=np.uint8):
    label = np.zeros(SHAPE, dtype)
    label[5, 5, 5] = value
    write_image(path, label, SPACING)


def hide(path):
    path.rename(path.with_name("." + path.name))


# --- the corpus: each builder returns (dataset folder, [(file relative to it, fragment), ...]) --------

def nn_labels_list(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", ["background", "a", "b"]))
    return ds, [J("labels: expected an object")]


def nn_channel_names_list(t):
    ds = nnunet(t)
    edit_json(ds, setitem("channel_names", ["MRI"]))
    return ds, [J("channel_names: expected an object")]


def nn_channel_key_word(t):
    ds = nnunet(t)
    edit_json(ds, setitem("channel_names", {"zero": "MRI"}))
    return ds, [J('channel_names["zero"]: channel keys must be the numbers 0..N-1')]


def nn_channel_keys_gap(t):
    ds = nnunet(t, n_channels=2)
    edit_json(ds, setitem("channel_names", {"0": "T2", "2": "ADC"}))
    return ds, [J('channel_names: channel keys must be 0..1 without gaps; missing "1"')]


def nn_channel_name_number(t):
    ds = nnunet(t)
    edit_json(ds, setitem("channel_names", {"0": 5}))
    return ds, [J('channel_names["0"]: expected the channel\'s modality name (e.g. "CT"), got 5')]


def nn_channel_names_empty(t):
    ds = nnunet(t)
    edit_json(ds, setitem("channel_names", {}))
    return ds, [J("channel_names: no channels declared")]


def nn_label_bool(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": True, "b": 2}))
    return ds, [J('labels["a"]: expected an integer label value or a list of them (a region), got true (a boolean)')]


def nn_label_fraction(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": 1.5, "b": 2}))
    return ds, [J('labels["a"]: expected an integer label value or a list of them (a region), got 1.5')]


def nn_label_string(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": "1", "b": 2}))
    return ds, [J('labels["a"]: expected an integer label value or a list of them (a region), got "1"')]


def nn_label_region(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": [1, 2], "b": 2}))
    return ds, [J('labels: regions (labels given as lists of values) need "regions_class_order"')]


def nn_label_negative(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": 1, "b": -2}))
    return ds, [J('labels["b"]: label values must be 0 or more, got -2')]


def nn_label_duplicate(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": 1, "b": 1}))
    return ds, [J('labels: value 1 is declared twice ("a", "b")')]


def nn_label_no_background(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"a": 1, "b": 2}))
    return ds, [J("labels: background must be declared as 0")]


def nn_label_gap(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", {"background": 0, "a": 1, "b": 3}))
    return ds, [J("labels: label values must be consecutive 0..3; missing 2")]


def nn_num_training_string(t):
    ds = nnunet(t)
    edit_json(ds, setitem("numTraining", "3"))
    return ds, [J('numTraining: expected a whole number of cases, got "3"')]


def nn_num_training_bool(t):
    ds = nnunet(t)
    edit_json(ds, setitem("numTraining", True))
    return ds, [J("numTraining: expected a whole number of cases, got true")]


def nn_file_ending_unsupported(t):
    ds = nnunet(t)
    edit_json(ds, setitem("file_ending", ".png"))
    return ds, [J("file_ending '.png' not supported")]


def nn_file_ending_number(t):
    ds = nnunet(t)
    edit_json(ds, setitem("file_ending", 5))
    return ds, [J('file_ending: expected a string like ".nii.gz", got 5')]


def nn_name_list(t):
    ds = nnunet(t)
    edit_json(ds, setitem("name", ["Synthetic"]))
    return ds, [J("name: expected a string, got a list")]


def missing_dataset_json(t):
    ds = nnunet(t)
    (ds / "dataset.json").unlink()
    return ds, [J("missing (every dataset folder needs a dataset.json)")]


def dataset_json_not_json(t):
    ds = nnunet(t)
    (ds / "dataset.json").write_text('{"labels": ')
    return ds, [J("not valid JSON")]


def dataset_json_array(t):
    ds = nnunet(t)
    (ds / "dataset.json").write_text("[1, 2]")
    return ds, [J("expected a JSON object, got a list")]


def dataset_json_no_layout(t):
    ds = nnunet(t)
    (ds / "dataset.json").write_text('{"name": "x"}')
    return ds, [J("neither nnU-Net v2")]


def nn_missing_labels_key(t):
    ds = nnunet(t)
    edit_json(ds, lambda m: m.pop("labels"))
    return ds, [J("missing key 'labels'")]


def msd_missing_labels_key(t):
    ds = msd(t)
    edit_json(ds, lambda m: m.pop("labels"))
    return ds, [J("missing key 'labels'")]


def dataset_is_a_file(t):
    path = t / "ds"
    path.write_text("not a folder")
    return path, [("", "not a folder")]


def nn_missing_image(t):
    ds = nnunet(t)
    (ds / "imagesTr" / "case_001_0000.nii.gz").unlink()
    return ds, [("imagesTr/case_001_0000.nii.gz", "missing image file for label file case_001.nii.gz")]


def nn_missing_label(t):
    ds = nnunet(t)
    (ds / "labelsTr" / "case_002.nii.gz").unlink()
    return ds, [("labelsTr/case_002.nii.gz", "missing label file for case 'case_002'")]


def nn_missing_channel(t):
    ds = nnunet(t, n_channels=2)
    (ds / "imagesTr" / "case_000_0001.nii.gz").unlink()
    return ds, [("imagesTr/case_000_0001.nii.gz", "missing image file (dataset.json declares 2 channel(s))")]


def nn_missing_folder(t):
    ds = nnunet(t)
    shutil.rmtree(ds / "labelsTr")
    return ds, [("labelsTr", "missing folder")]


def nn_extra_channel(t):
    ds = nnunet(t)
    shutil.copy(ds / "imagesTr" / "case_000_0000.nii.gz", ds / "imagesTr" / "case_000_0001.nii.gz")
    return ds, [("imagesTr/case_000_0001.nii.gz", "channel 1 not declared in dataset.json")]


def nn_label_without_images_two_channels(t):
    ds = nnunet(t, n_channels=2)
    for c in range(2):
        (ds / "imagesTr" / f"case_002_{c:04d}.nii.gz").unlink()
    return ds, [(f"imagesTr/case_002_{c:04d}.nii.gz", "missing image file for label file case_002.nii.gz")
                for c in range(2)]


def nn_misnamed_image(t):
    ds = nnunet(t)
    shutil.copy(ds / "imagesTr" / "case_000_0000.nii.gz", ds / "imagesTr" / "case_003.nii.gz")
    return ds, [("imagesTr/case_003.nii.gz", "name does not follow CASE_XXXX.nii.gz")]


def nn_wrong_ending_image(t):
    ds = nnunet(t)
    path = ds / "imagesTr" / "case_001_0000.nii.gz"
    write_image(ds / "imagesTr" / "case_001_0000.nii", np.ones(SHAPE, np.float32), SPACING)
    path.unlink()
    return ds, [("imagesTr/case_001_0000.nii", "ending '.nii' is not dataset.json's file_ending '.nii.gz'")]


def nn_wrong_ending_whole_case(t):
    ds = nnunet(t)
    write_image(ds / "imagesTr" / "case_003_0000.mha", np.ones(SHAPE, np.float32), SPACING)
    write_image(ds / "labelsTr" / "case_003.mha", np.zeros(SHAPE, np.uint8), SPACING)
    edit_json(ds, setitem("numTraining", 4))
    return ds, [("imagesTr/case_003_0000.mha", "ending '.mha' is not dataset.json's file_ending '.nii.gz'"),
                ("labelsTr/case_003.mha", "ending '.mha' is not"),
                J("numTraining is 4 but 3 case(s) were found in imagesTr/labelsTr; ignored: 2 with an ending "
                  "other than file_ending '.nii.gz'")]


def nn_hidden_image(t):
    ds = nnunet(t)
    hide(ds / "imagesTr" / "case_001_0000.nii.gz")
    return ds, [("imagesTr/case_001_0000.nii.gz", "a hidden file .case_001_0000.nii.gz is there, but names "
                                                  "starting with '.' are ignored")]


def nn_hidden_whole_case(t):
    ds = nnunet(t)
    hide(ds / "imagesTr" / "case_002_0000.nii.gz")
    hide(ds / "labelsTr" / "case_002.nii.gz")
    return ds, [("imagesTr/.case_002_0000.nii.gz", "hidden file (name starts with '.'), ignored"),
                ("labelsTr/.case_002.nii.gz", "hidden file (name starts with '.'), ignored"),
                J("numTraining is 3 but 2 case(s) were found in imagesTr/labelsTr; ignored: 2 hidden")]


def nn_resource_forks_counted_once(t):
    ds = nnunet(t)
    for p in list((ds / "imagesTr").iterdir()):
        (p.parent / f"._{p.name}").write_bytes(b"\x00junk")
    edit_json(ds, setitem("numTraining", 4))
    return ds, [J("numTraining is 4 but 3 case(s) were found in imagesTr/labelsTr; ignored: 3 macOS resource "
                  "fork(s) '._*' (expected junk)")]


def nn_count_mismatch(t):
    ds = nnunet(t)
    edit_json(ds, setitem("numTraining", 5))
    return ds, [J("numTraining is 5 but 3 case(s) were found in imagesTr/labelsTr")]


def nn_count_mismatch_not_an_image(t):
    ds = nnunet(t)
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", ds / "labelsTr" / "case_003.nii.gz.part")
    edit_json(ds, setitem("numTraining", 4))
    return ds, [("labelsTr/case_003.nii.gz.part", "not an image file ending in '.nii.gz', ignored"),
                J("ignored: 1 not an image file")]


def msd_modality_list(t):
    ds = msd(t)
    edit_json(ds, setitem("modality", ["MRI", "MR1"]))
    return ds, [J("modality: expected an object like {\"0\": \"CT\"}, got a list")]


def msd_modality_key_word(t):
    ds = msd(t)
    edit_json(ds, setitem("modality", {"0": "MRI", "one": "MR1"}))
    return ds, [J('modality["one"]: channel keys must be the numbers')]


def msd_label_key_word(t):
    ds = msd(t)
    edit_json(ds, setitem("labels", {"zero": "background", "1": "a", "2": "b"}))
    return ds, [J('labels["zero"]: label keys must be integer values as strings')]


def msd_label_key_negative(t):
    ds = msd(t)
    edit_json(ds, setitem("labels", {"0": "background", "1": "a", "-2": "b"}))
    return ds, [J('labels["-2"]: label values must be 0 or more, got -2')]


def msd_label_name_twice(t):
    ds = msd(t)
    edit_json(ds, setitem("labels", {"0": "background", "1": "a", "2": "a"}))
    return ds, [J('labels: name "a" is used for two values')]


def msd_label_name_null(t):
    ds = msd(t)
    edit_json(ds, setitem("labels", {"0": "background", "1": None, "2": "b"}))
    return ds, [J('labels["1"]: expected the label\'s name, got null')]


def msd_training_object(t):
    ds = msd(t)
    edit_json(ds, lambda m: m.update(training={"image": "imagesTr/case_000.nii.gz"}))
    return ds, [J("training: expected a list of {\"image\": PATH, \"label\": PATH} entries, got an object")]


def msd_entry_number(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"].__setitem__(1, 3))
    return ds, [J('training[1]: expected an object {"image": PATH, "label": PATH}, got 3')]


def msd_entry_null(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"].__setitem__(2, None))
    return ds, [J("training[2]: expected an object {\"image\": PATH, \"label\": PATH}, got null")]


def msd_entry_missing_label(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"][0].pop("label"))
    return ds, [J('training[0]: missing "label"')]


def msd_entry_image_number(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"][1].update(image=17))
    return ds, [J("training[1].image: expected a path string, got 17")]


def msd_entry_parent_path(t):
    ds = msd(t)
    shutil.copy(ds / "imagesTr" / "case_000.nii.gz", t / "outside.nii.gz")
    edit_json(ds, lambda m: m["training"][1].update(image="imagesTr/../../outside.nii.gz"))
    return ds, [J('training[1].image: "imagesTr/../../outside.nii.gz": points outside the dataset folder; refused')]


def msd_entry_absolute_path(t):
    ds = msd(t)
    outside = t / "outside.nii.gz"
    shutil.copy(ds / "labelsTr" / "case_000.nii.gz", outside)
    edit_json(ds, lambda m: m["training"][0].update(label=str(outside)))
    return ds, [J("training[0].label: " + json.dumps(str(outside)) + ": absolute path; paths in dataset.json "
                  "must be relative to the dataset folder; refused")]


def msd_entry_symlink_outside(t):
    ds = msd(t)
    outside = t / "elsewhere" / "scan.nii.gz"
    outside.parent.mkdir()
    shutil.copy(ds / "imagesTr" / "case_002.nii.gz", outside)
    os.symlink(outside, ds / "imagesTr" / "linked.nii.gz")
    edit_json(ds, lambda m: m["training"][2].update(image="./imagesTr/linked.nii.gz"))
    return ds, [J("training[2].image: \"./imagesTr/linked.nii.gz\": resolves outside the dataset folder")]


def msd_duplicate_entry(t):
    ds = msd(t)
    edit_json(ds, lambda m: (m["training"].append(dict(m["training"][1])), m.update(numTraining=4)))
    return ds, [J("training[3]: repeats training[1] (./imagesTr/case_001.nii.gz); the case is counted once")]


def msd_same_image_other_label(t):
    ds = msd(t)
    edit_json(ds, lambda m: (m["training"].append({"image": "imagesTr/case_001.nii.gz",
                                                   "label": "labelsTr/case_002.nii.gz"}), m.update(numTraining=4)))
    return ds, [J("training[3]: lists the image of training[1] (imagesTr/case_001.nii.gz) with another label")]


def msd_case_id_collision(t):
    ds = msd(t, n_cases=2)
    for sub in ("siteA", "siteB"):
        (ds / "imagesTr" / sub).mkdir()
    (ds / "imagesTr" / "case_000.nii.gz").rename(ds / "imagesTr" / "siteA" / "scan.nii.gz")
    (ds / "imagesTr" / "case_001.nii.gz").rename(ds / "imagesTr" / "siteB" / "scan.nii.gz")
    edit_json(ds, lambda m: (m["training"][0].update(image="imagesTr/siteA/scan.nii.gz"),
                             m["training"][1].update(image="imagesTr/siteB/scan.nii.gz")))
    return ds, [J(f"training[1]: {ds / 'imagesTr/siteB/scan.nii.gz'} and {ds / 'imagesTr/siteA/scan.nii.gz'} "
                  f"(training[0]) would both be case 'scan'")]


def msd_missing_image(t):
    ds = msd(t)
    (ds / "imagesTr" / "case_001.nii.gz").unlink()
    return ds, [("imagesTr/case_001.nii.gz", "missing image file (listed in dataset.json training[1])")]


def msd_unsupported_ending(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"][0].update(label="labelsTr/case_000.png"))
    return ds, [J('training[0].label: "labelsTr/case_000.png" is not a supported image file')]


def msd_count_mismatch_unlisted(t):
    ds = msd(t)
    edit_json(ds, lambda m: m["training"].pop())
    return ds, [("imagesTr/case_002.nii.gz", "in imagesTr but not listed in dataset.json 'training'"),
                J("numTraining is 3 but 'training' lists 2 entries; 1 scan(s) in imagesTr not listed, "
                  "3 macOS resource fork(s) '._*' ignored (expected junk)")]


def nn_nan_voxels(t):
    ds = nnunet(t)
    nan_image(ds / "imagesTr" / "case_002_0000.nii.gz")
    return ds, [("imagesTr/case_002_0000.nii.gz", "1 NaN/Inf voxel(s)")]


def nn_undeclared_label(t):
    ds = nnunet(t)
    label_with(ds / "labelsTr" / "case_001.nii.gz", 7)
    return ds, [("labelsTr/case_001.nii.gz", "label value(s) 7 not declared in dataset.json")]


def nn_fractional_label(t):
    ds = nnunet(t)
    label_with(ds / "labelsTr" / "case_000.nii.gz", 0.5, np.float32)
    return ds, [("labelsTr/case_000.nii.gz", "label map has non-integer values")]


def nn_label_spacing_differs(t):
    ds = nnunet(t)
    write_image(ds / "labelsTr" / "case_001.nii.gz", np.zeros(SHAPE, np.uint8), (2.5, 1.0, 1.0))
    return ds, [("labelsTr/case_001.nii.gz", "geometry differs from the image (spacing")]


def nn_label_shape_differs(t):
    ds = nnunet(t)
    write_image(ds / "labelsTr" / "case_001.nii.gz", np.zeros((12, 16, 13), np.uint8), SPACING)
    return ds, [("labelsTr/case_001.nii.gz", "shape (12, 16, 13) differs from image shape (12, 16, 14)")]


def nn_image_2d(t):
    ds = nnunet(t)
    write_image(ds / "imagesTr" / "case_000_0000.nii.gz", np.ones((16, 14), np.float32), (1.0, 1.0))
    return ds, [("imagesTr/case_000_0000.nii.gz", "is 2D, expected a 3D image")]


def nn_garbage_label(t):
    ds = nnunet(t)
    (ds / "labelsTr" / "case_002.nii.gz").write_bytes(b"not an image at all")
    return ds, [("labelsTr/case_002.nii.gz", "unreadable or truncated file")]


def msd_channel_count_4d(t):
    ds = msd(t)
    edit_json(ds, setitem("modality", {"0": "T2", "1": "ADC", "2": "DWI"}))
    return ds, [(f"imagesTr/case_00{i}.nii.gz", "has 2 channels but dataset.json declares 3") for i in range(3)]


def msd_nan_in_channel(t):
    ds = msd(t)
    nan_image(ds / "imagesTr" / "case_001.nii.gz", channels=2)
    return ds, [("imagesTr/case_001.nii.gz", "1 NaN/Inf voxel(s) in channel 0"),
                ("imagesTr/case_001.nii.gz", "1 NaN/Inf voxel(s) in channel 1")]


def combined_json_missing_nan(t):
    ds = nnunet(t)
    edit_json(ds, setitem("labels", ["background", "a", "b"]))
    (ds / "imagesTr" / "case_001_0000.nii.gz").unlink()
    nan_image(ds / "imagesTr" / "case_002_0000.nii.gz")
    return ds, [J("labels: expected an object"),
                ("imagesTr/case_001_0000.nii.gz", "missing image file"),
                ("imagesTr/case_002_0000.nii.gz", "1 NaN/Inf voxel(s)")]


def combined_channels_ending_geometry(t):
    ds = nnunet(t, n_cases=4, n_channels=2)
    edit_json(ds, setitem("channel_names", {"0": "T2", "01": "ADC"}))
    (ds / "labelsTr" / "case_000.nii.gz").rename(ds / "labelsTr" / "case_000.nrrd")
    write_image(ds / "labelsTr" / "case_003.nii.gz", np.zeros(SHAPE, np.uint8), SPACING, origin=(9.0, 0.0, 0.0))
    label_with(ds / "labelsTr" / "case_002.nii.gz", 3)  # labels are fine: this one is reported
    return ds, [J('channel_names["01"]: channel keys must be the numbers'),
                ("labelsTr/case_000.nrrd", "ending '.nrrd' is not dataset.json's file_ending '.nii.gz'"),
                ("labelsTr/case_002.nii.gz", "label value(s) 3 not declared"),
                ("labelsTr/case_003.nii.gz", "geometry differs from the image (origin")]


def combined_msd_every_stage(t):
    ds = msd(t, n_cases=4)
    edit_json(ds, lambda m: (m.update(modality=["T2", "ADC"]), m["training"].__setitem__(0, None)))
    (ds / "labelsTr" / "case_001.nii.gz").unlink()
    nan_image(ds / "imagesTr" / "case_002.nii.gz", channels=2)
    label_with(ds / "labelsTr" / "case_003.nii.gz", 9)
    return ds, [J("modality: expected an object"), J("training[0]: expected an object"),
                ("imagesTr/case_002.nii.gz", "NaN/Inf voxel(s) in channel 0"),
                ("imagesTr/case_002.nii.gz", "NaN/Inf voxel(s) in channel 1"),
                ("labelsTr/case_001.nii.gz", "missing label file (listed in dataset.json training[1])"),
                ("labelsTr/case_003.nii.gz", "label value(s) 9 not declared")]


def combined_msd_paths_and_labels(t):
    ds = msd(t)
    edit_json(ds, lambda m: (m["training"].append(dict(m["training"][2])), m.update(numTraining=4),
                             m["training"][0].update(label="/etc/passwd.nii.gz")))
    label_with(ds / "labelsTr" / "case_001.nii.gz", 0.25, np.float32)
    return ds, [J('training[0].label: "/etc/passwd.nii.gz": absolute path'),
                J("training[3]: repeats training[2]"),
                ("labelsTr/case_001.nii.gz", "label map has non-integer values")]


def combined_missing_folder_and_json(t):
    ds = nnunet(t)
    shutil.rmtree(ds / "imagesTr")
    edit_json(ds, setitem("numTraining", -3))
    return ds, [J("numTraining: expected a whole number of cases, got -3"), ("imagesTr", "missing folder")]


def P(builder, cls, subprocess=False):
    name = builder.__name__.replace("_", "-")
    return pytest.param(builder, subprocess, id=f"{cls}/{name}")


CORPUS = [
    *[P(b, "json-type") for b in (
        nn_labels_list, nn_channel_names_list, nn_channel_key_word, nn_channel_keys_gap, nn_channel_name_number,
        nn_channel_names_empty, nn_label_bool, nn_label_fraction, nn_label_string, nn_label_region,
        nn_label_negative, nn_label_duplicate, nn_label_no_background, nn_label_gap, nn_num_training_string,
        nn_num_training_bool, nn_file_ending_unsupported, nn_file_ending_number, nn_name_list, msd_modality_list,
        msd_modality_key_word, msd_label_key_word, msd_label_key_negative, msd_label_name_twice,
        msd_label_name_null)],
    P(msd_training_object, "json-type", subprocess=True),
    *[P(b, "json-structure") for b in (
        missing_dataset_json, dataset_json_not_json, dataset_json_array, dataset_json_no_layout,
        nn_missing_labels_key, msd_missing_labels_key, dataset_is_a_file)],
    *[P(b, "missing-file") for b in (
        nn_missing_image, nn_missing_label, nn_missing_channel, nn_missing_folder, nn_extra_channel,
        nn_label_without_images_two_channels, msd_missing_image)],
    *[P(b, "ignored-file") for b in (
        nn_misnamed_image, nn_wrong_ending_image, nn_wrong_ending_whole_case, nn_hidden_image,
        nn_hidden_whole_case, nn_resource_forks_counted_once, nn_count_mismatch, nn_count_mismatch_not_an_image,
        msd_count_mismatch_unlisted)],
    *[P(b, "msd-entry") for b in (
        msd_entry_number, msd_entry_missing_label, msd_entry_image_number, msd_entry_parent_path,
        msd_entry_absolute_path, msd_entry_symlink_outside, msd_duplicate_entry, msd_same_image_other_label,
        msd_case_id_collision, msd_unsupported_ending)],
    P(msd_entry_null, "msd-entry", subprocess=True),
    *[P(b, "voxels") for b in (
        nn_nan_voxels, nn_undeclared_label, nn_fractional_label, nn_label_spacing_differs, nn_label_shape_differs,
        nn_image_2d, nn_garbage_label, msd_channel_count_4d, msd_nan_in_channel)],
    *[P(b, "combined") for b in (
        combined_channels_ending_geometry, combined_msd_paths_and_labels, combined_missing_folder_and_json)],
    P(combined_json_missing_nan, "combined", subprocess=True),
    P(combined_msd_every_stage, "combined", subprocess=True),
]


@pytest.mark.parametrize("build, via_subprocess", CORPUS)
def test_broken_dataset_is_refused_with_every_problem_once(build, via_subprocess, tmp_path, capsys):
    ds, expected = build(tmp_path)
    out = tmp_path / "out"
    args = ["plan", str(ds), "-o", str(out), "--configs", "3d_fullres", "--workers", "1", "-q"]
    if via_subprocess:
        proc = run_autoseg(*args, check=False)
        code, err = proc.returncode, proc.stderr
        assert "Traceback" not in err and proc.stdout == ""
    else:
        code, err = main(args), capsys.readouterr().err
    assert code == 1, err
    lines = err.splitlines()
    assert lines[-1] == f"autoseg: error: {ds}: {len(expected)} problem(s) found, nothing was written", err
    problems = lines[:-1]
    unmatched = list(problems)
    for rel, fragment in expected:
        prefix = f"{ds / rel if rel else ds}: "
        hits = [ln for ln in problems if ln.startswith(prefix) and fragment in ln]
        assert len(hits) == 1, f"expected exactly one line {prefix}...{fragment}...; got:\n{err}"
        unmatched.remove(hits[0])
    assert not unmatched, "unexpected lines:\n" + "\n".join(unmatched)
    files = [ln.split(": ", 1)[0] for ln in problems]
    assert files == sorted(files), "problems are sorted by file"
    assert not out.exists(), "nothing may be written"


def test_expected_junk_is_accepted_without_a_word(tmp_path, capsys):
    """Resource forks and hidden files are fine while every declared case is there (the MSD fixture
    carries '._*' forks too)."""
    ds = nnunet(tmp_path)
    (ds / "imagesTr" / ".DS_Store").write_bytes(b"\x00")
    (ds / "labelsTr" / "._case_000.nii.gz").write_bytes(b"\x00junk")
    for root in (ds, msd(tmp_path / "m")):
        out = tmp_path / f"out-{root.parent.name}"
        assert main(["plan", str(root), "-o", str(out), "--configs", "3d_fullres", "--workers", "1", "-q"]) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and (out / "plan.json").is_file()


def test_load_dataset_still_raises_for_callers_that_need_the_cases(tmp_path):
    """Training validation, find-best and preprocessing call load_dataset: any problem raises there,
    while scan_dataset lists what it could find with the problems beside it."""
    from autoseg.dataset import load_dataset
    from autoseg.dataset.layout import scan_dataset
    from autoseg.errors import DatasetInvalid

    ds = nnunet(tmp_path)
    edit_json(ds, setitem("labels", {"background": 0, "a": 1.5, "b": 2}))
    (ds / "labelsTr" / "case_000.nii.gz").unlink()
    with pytest.raises(DatasetInvalid) as info:
        load_dataset(ds)
    assert len(info.value.problems) == 2
    scan = scan_dataset(ds)
    assert [c.case_id for c in scan.dataset.cases] == ["case_001", "case_002"]
    assert sorted(scan.problems) == sorted(info.value.problems)
