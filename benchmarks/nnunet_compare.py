"""Compare the decisions of an autoseg plan with an nnU-Net v2 nnUNetPlans.json (stdlib only)."""
from __future__ import annotations

NORMALIZATION_NAMES = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none",
                       "RescaleTo01Normalization": "rescale_0_1"}
# Deliberate difference (docs/planning.md): autoseg pools at most this many times per axis.
MAX_POOLS_PER_AXIS = 6


def nnunet_decisions(nnunet: dict) -> dict:
    """The planner decisions of nnUNetPlans.json in autoseg's vocabulary, per configuration."""
    out = {"transpose_forward": nnunet["transpose_forward"], "configurations": {}}
    for name, cfg in nnunet["configurations"].items():
        if "inherits_from" in cfg:
            parent = dict(nnunet["configurations"][cfg["inherits_from"]])
            parent.update({k: v for k, v in cfg.items() if k != "inherits_from"})
            cfg = parent
        arch = cfg["architecture"]["arch_kwargs"]
        strides = [list(s) for s in arch["strides"]]
        out["configurations"][name] = {
            "spacing": [round(float(s), 6) for s in cfg["spacing"]],
            "patch_size": list(cfg["patch_size"]),
            "batch_size": cfg["batch_size"],
            "pool_strides": strides,
            "num_pools_per_axis": [sum(1 for s in strides if s[a] == 2) for a in range(len(strides[0]))],
            "conv_kernels": [list(k) for k in arch["kernel_sizes"]],
            "features_per_stage": list(arch["features_per_stage"]),
            "architecture": "resenc" if cfg["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
            else "plain",
            "blocks_per_stage": list(arch.get("n_blocks_per_stage", arch.get("n_conv_per_stage"))),
            "convs_per_stage_decoder": list(arch["n_conv_per_stage_decoder"]),
            "normalization": [NORMALIZATION_NAMES.get(n, n) for n in cfg["normalization_schemes"]],
            "use_nonzero_mask": list(cfg["use_mask_for_norm"]),
            "batch_dice": cfg["batch_dice"],
        }
    return out


def autoseg_decisions(plan: dict) -> dict:
    """The same decisions read from an autoseg plan.json (as a dict)."""
    out = {"transpose_forward": plan["transpose_forward"], "configurations": {}}
    for name, cfg in plan["configurations"].items():
        out["configurations"][name] = {
            "spacing": [round(float(s), 6) for s in cfg["spacing"]],
            "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"], "pool_strides": cfg["pool_strides"],
            "num_pools_per_axis": cfg["num_pools_per_axis"], "conv_kernels": cfg["conv_kernels"],
            "features_per_stage": cfg["features_per_stage"], "architecture": cfg.get("architecture", "plain"),
            "blocks_per_stage": cfg["convs_per_stage_encoder"], "convs_per_stage_decoder": cfg["convs_per_stage_decoder"],
            "normalization": [n["scheme"] for n in plan["normalization"]],
            "use_nonzero_mask": [n["use_nonzero_mask"] for n in plan["normalization"]],
            "batch_dice": cfg["batch_dice"],
        }
    return out


def differences(plan: dict, nnunet: dict) -> list[str]:
    """Every decision that differs, one line each; empty when the plans agree."""
    a, b = autoseg_decisions(plan), nnunet_decisions(nnunet)
    diffs = []
    if a["transpose_forward"] != b["transpose_forward"]:
        diffs.append(f"transpose_forward: autoseg {a['transpose_forward']} vs nnU-Net {b['transpose_forward']}")
    if set(a["configurations"]) != set(b["configurations"]):
        diffs.append(f"configurations: autoseg {sorted(a['configurations'])} vs nnU-Net {sorted(b['configurations'])}")
    for name in sorted(set(a["configurations"]) & set(b["configurations"])):
        for key, value in a["configurations"][name].items():
            theirs = b["configurations"][name][key]
            if value != theirs:
                diffs.append(f"{name}.{key}: autoseg {value} vs nnU-Net {theirs}")
    return diffs


def deliberate(nnunet: dict) -> set[str]:
    """Configurations where nnU-Net pools more than MAX_POOLS_PER_AXIS times on some axis."""
    return {name for name, cfg in nnunet_decisions(nnunet)["configurations"].items()
            if max(cfg["num_pools_per_axis"]) > MAX_POOLS_PER_AXIS}
