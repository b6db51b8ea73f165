"""Draws docs/figures/architecture_<preset>.png: the network autoseg builds for the Hippocampus reference plan
with each preset, read from the built torch modules themselves (not from the plan's numbers).

    .venv/bin/python docs/figures/make_architecture_figure.py [plain resenc-m ...]

Each encoder stage is a box whose height grows with its channels, labelled with its channels, its
convolutions or residual blocks (counted in the module), the stride of its first convolution and the
feature-map size of the planned patch at that stage; decoder stages mirror it, with the skip connections and
the deep-supervision heads.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn

from autoseg.fingerprint import load_fingerprint
from autoseg.model.network import ResidualBlock, build_network
from autoseg.planning import plan_experiment

REPO = Path(__file__).resolve().parents[2]
FINGERPRINT = REPO / "plans" / "reference" / "fingerprints" / "Dataset004_Hippocampus.json"
BOX_W, GAP, TOP = 150, 36, 70
ENCODER, DECODER, STEM, HEAD = (70, 130, 180), (120, 170, 90), (150, 150, 150), (200, 90, 60)
ASPP_COLOUR = (140, 90, 160)


def _stage_facts(stage: nn.Sequential) -> tuple[int, str, list[int]]:
    """(output channels, what it is made of, first convolution's stride) read from the modules."""
    convs = [m for m in stage.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    blocks = [m for m in stage.modules() if isinstance(m, ResidualBlock)]
    made_of = (f"{len(blocks)} residual block{'s' * (len(blocks) != 1)}" if blocks
               else f"{len(convs)} conv{'s' * (len(convs) != 1)}")
    dilation = list(convs[0].dilation)
    if any(d > 1 for d in dilation):
        made_of += f"\ndilation {'x'.join(map(str, dilation))}"
    return convs[-1].out_channels, made_of, list(convs[0].stride)


def _aspp_lines(aspp: nn.Module) -> str:
    """The ASPP module's branches, read from it: the 1x1 one, each dilated one's rates, image pooling."""
    rates = ["x".join(map(str, branch[0].dilation)) for branch in aspp.branches[1:]]
    return "ASPP\n1x1 conv\n" + "\n".join(f"rate {r}" for r in rates) + "\nimage pooling\n-> 1x1 projection"


def draw(preset: str, out: Path) -> None:
    config = plan_experiment(load_fingerprint(FINGERPRINT), preset=preset).configurations["3d_fullres"]
    with torch.device("meta"):
        network = build_network(config, 1, 3, deep_supervision=True)
    stages = [_stage_facts(stage) for stage in network.encoder]
    n = len(stages)
    width = (2 * n - 1) * (BOX_W + GAP) + 40
    bottom = TOP + (n - 1) * 55 + 62 + stages[-1][0] // 4 + (125 if network.bottleneck is not None else 0)
    image = Image.new("RGB", (width, bottom + 40), "white")
    d = ImageDraw.Draw(image)
    d.text((20, 12), f"{preset}: {sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, patch "
                     f"{'x'.join(map(str, config.patch_size))}, batch {config.batch_size} (Hippocampus reference plan)",
           fill="black")
    size = list(config.patch_size)
    centres = []
    for i, (channels, made_of, stride) in enumerate(stages):
        size = [s // k for s, k in zip(size, stride)]
        x = 20 + i * (BOX_W + GAP)
        y = TOP + i * 55
        height = 62 + channels // 4
        d.rectangle([x, y, x + BOX_W, y + height], fill=ENCODER)
        d.text((x + 6, y + 4), f"{channels} ch\n{made_of}\nstride {'x'.join(map(str, stride))}\n"
                               f"{'x'.join(map(str, size))}", fill="white")
        centres.append((x, y, height, size))
        if i:
            px, py, ph, _ = centres[i - 1]
            d.line([px + BOX_W, py + ph // 2, x, y + height // 2], fill="black", width=2)
    if network.bottleneck is not None:  # DeepLab's ASPP on the deepest features
        x, y, height, _ = centres[-1]
        d.rectangle([x, y + height + 12, x + BOX_W, y + height + 112], fill=ASPP_COLOUR)
        d.text((x + 6, y + height + 16), _aspp_lines(network.bottleneck), fill="white")
    if network.stem is not None:
        d.rectangle([20, TOP - 40, 20 + BOX_W, TOP - 12], fill=STEM)
        d.text((26, TOP - 36), f"stem conv -> {stages[0][0]} ch", fill="white")
    for j, level in enumerate(range(n - 2, -1, -1)):
        ex, ey, eh, size = centres[level]
        x = 20 + (n + j) * (BOX_W + GAP)
        convs = sum(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in network.decoder[j].modules())
        d.rectangle([x, ey, x + BOX_W, ey + eh], fill=DECODER)
        d.text((x + 6, ey + 4), f"{stages[level][0]} ch\nup + skip\n{convs} conv{'s' * (convs != 1)}\n{'x'.join(map(str, size))}",
               fill="white")
        d.line([ex + BOX_W, ey + 6, x, ey + 6], fill=(160, 160, 160), width=1)  # skip connection
        d.rectangle([x + BOX_W - 24, ey + eh + 4, x + BOX_W, ey + eh + 18], fill=HEAD)  # deep-supervision head
    d.text((20, bottom + 14), "blue: encoder stages (read from the modules); green: decoder; grey line: skip; red: 1x1 "
                      "segmentation head (deep supervision); purple: ASPP", fill="black")
    image.save(out)


def main() -> None:
    presets = sys.argv[1:] or ["plain", "resenc-m", "deeplab"]
    for preset in presets:
        out = REPO / "docs" / "figures" / f"architecture_{preset}.png"
        draw(preset, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
