"""Draws docs/figures/family_<name>.png for the classic families (FCN, SegNet, V-Net, UNet++, PSPNet, HRNet):
the network autoseg builds for the Hippocampus reference plan, traced from one forward pass of the built
modules (on the meta device: nothing is computed), not from the plan's numbers.

    .venv/bin/python docs/figures/make_family_figure.py [fcn segnet ...]

Every building block (a convolution stage, a residual block, a pooling or unpooling, a 1x1 head) is a box
labelled with what it is, its output channels and feature-map size; the operations between blocks that
define the families (concatenation, sum, interpolation) are small circles. Rows are resolutions (full at
the top), columns the order in which data can flow, so HRNet's parallel streams stand one above another. An
arrow is a tensor passed on, found by following each tensor from the block that made it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.overrides import TorchFunctionMode

from autoseg.fingerprint import load_fingerprint
from autoseg.model.blocks import ConvNormAct, ResidualBlock
from autoseg.model.families.vnet import ConvNormPReLU, ResidualConvs
from autoseg.model.network import build_network
from autoseg.planning import plan_experiment

REPO = Path(__file__).resolve().parents[2]
FINGERPRINT = REPO / "plans" / "reference" / "fingerprints" / "Dataset004_Hippocampus.json"
BLOCKS = (ConvNormAct, ResidualBlock, ResidualConvs, ConvNormPReLU)
LEAVES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MaxPool2d, nn.MaxPool3d,
          nn.MaxUnpool2d, nn.MaxUnpool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
OPERATIONS = {"cat": "cat", "add": "+", "__add__": "+", "__radd__": "+", "interpolate": "up"}
COLOURS = {"conv": (70, 130, 180), "residual": (40, 100, 150), "transposed conv": (120, 170, 90),
           "max pool": (200, 150, 60), "max unpool": (200, 110, 40), "avg pool": (170, 140, 90),
           "1x1 conv": (200, 90, 60), "input": (120, 120, 120)}
BOX_W, BOX_H, COLUMN, ROW = 118, 46, 136, 84


def _is_unit(module: nn.Module) -> bool:
    if isinstance(module, BLOCKS + LEAVES):
        return True  # a stage of blocks is one unit, drawn as "n x block"
    return isinstance(module, nn.Sequential) and len(module) > 0 and all(isinstance(c, BLOCKS) for c in module)


def _describe(module: nn.Module) -> tuple[str, str]:
    """(kind, label) of a unit, read from the module."""
    if isinstance(module, nn.Sequential) and all(isinstance(c, BLOCKS) for c in module):
        kind, label = _describe(module[0])
        return kind, f"{len(module)} x {label}" if len(module) > 1 else label
    if isinstance(module, ResidualBlock):
        return "residual", "res. block"
    if isinstance(module, ResidualConvs):
        return "residual", f"{len(module.convs)} conv + res."
    if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "transposed conv", "transp. conv"
    if isinstance(module, (nn.MaxPool2d, nn.MaxPool3d)):
        return "max pool", "max pool (idx)"
    if isinstance(module, (nn.MaxUnpool2d, nn.MaxUnpool3d)):
        return "max unpool", "unpool (idx)"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return "avg pool", "avg pool"
    conv = module if isinstance(module, (nn.Conv2d, nn.Conv3d)) else next(
        m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)))
    if isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "transposed conv", "transp. conv"
    if all(k == 1 for k in conv.kernel_size):
        return "1x1 conv", "1x1 conv"
    stride = "" if all(s == 1 for s in conv.stride) else " /" + "x".join(map(str, conv.stride))
    dilation = "" if all(d == 1 for d in conv.dilation) else " dil " + "x".join(map(str, conv.dilation))
    return "conv", f"conv{stride}{dilation}"


class _Tracer(TorchFunctionMode):
    """Follows tensors from block to block: each tensor remembers the node that made it."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.nodes: list[dict] = []
        self.edges: set[tuple[int, int]] = set()
        self.made_by: dict[int, int] = {}
        self.keep: list = []  # keeps traced tensors alive so their ids stay unique
        self.depth = 0
        units = set()
        for name, module in network.named_modules():
            if _is_unit(module) and not any(name.startswith(u + ".") for u in units):
                units.add(name)
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(self._leave)

    def node(self, kind: str, label: str, output, sources) -> None:
        index = len(self.nodes)
        out = output[0] if isinstance(output, tuple) else output
        self.nodes.append({"kind": kind, "label": label, "shape": list(out.shape[1:])})
        for source in sources:
            if id(source) in self.made_by:
                self.edges.add((self.made_by[id(source)], index))
        for tensor in output if isinstance(output, tuple) else (output,):
            self.made_by[id(tensor)] = index
            self.keep.append(tensor)

    def _enter(self, module, args):
        self.depth += 1

    def _leave(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            kind, label = _describe(module)
            self.node(kind, label, output, [a for a in args if isinstance(a, torch.Tensor)])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunction():
            output = func(*args, **kwargs)
        if self.depth == 0 and isinstance(output, torch.Tensor):
            inputs = [a for a in (args[0] if func is torch.cat else args) if isinstance(a, torch.Tensor)]
            tracked = [a for a in inputs if id(a) in self.made_by]
            name = getattr(func, "__name__", "")
            if name in OPERATIONS and tracked:
                self.node("op", OPERATIONS[name], output, tracked)
            elif tracked:  # a view, an expand...: the same data passed on
                self.made_by[id(output)] = self.made_by[id(tracked[0])]
                self.keep.append(output)
        return output


def trace(network: nn.Module, patch) -> _Tracer:
    tracer = _Tracer(network)
    with torch.device("meta"):
        x = torch.empty(1, 1, *patch)
    tracer.node("input", "input", x, [])
    with tracer, torch.no_grad():
        network(x)
    return tracer


def draw(family: str, out: Path) -> None:
    config = plan_experiment(load_fingerprint(FINGERPRINT), preset=family).configurations["3d_fullres"]
    with torch.device("meta"):
        network = build_network(config, 1, 3, deep_supervision=False).eval()
    tracer = trace(network, config.patch_size)
    nodes, edges = tracer.nodes, sorted(tracer.edges)
    sizes = sorted({tuple(n["shape"][1:]) for n in nodes}, key=lambda s: -torch.tensor(s).prod().item())
    column = [0] * len(nodes)
    for a, b in edges:  # edges run forward in creation order: one pass gives the longest path
        column[b] = max(column[b], column[a] + 1)
    rows = {i: sizes.index(tuple(n["shape"][1:])) for i, n in enumerate(nodes)}
    stacked: dict[tuple[int, int], int] = {}
    place = {}
    for i in range(len(nodes)):  # blocks of one column and row (HRNet's fusions) side by side in a cell
        key = (column[i], rows[i])
        place[i] = (column[i], rows[i], stacked.get(key, 0))
        stacked[key] = stacked.get(key, 0) + 1
    depth = max(stacked.values())
    row_h = ROW + (depth - 1) * (BOX_H + 6)
    width = (max(column) + 1) * COLUMN + 40
    height = len(sizes) * row_h + 110
    image = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(image)
    parameters = sum(p.numel() for p in network.parameters())
    d.text((20, 12), f"{family}: {parameters / 1e6:.2f} M parameters, patch {'x'.join(map(str, config.patch_size))}, "
                     f"batch {config.batch_size} (Hippocampus reference plan); traced from the built network",
           fill="black")

    def centre(i):
        c, r, k = place[i]
        return 20 + c * COLUMN + BOX_W // 2, 50 + r * row_h + k * (BOX_H + 6) + BOX_H // 2

    def half(i):
        return 16 if nodes[i]["kind"] == "op" else BOX_W // 2

    for a, b in edges:
        (xa, ya), (xb, yb) = centre(a), centre(b)
        d.line([xa + half(a), ya, xb - half(b), yb], fill=(150, 150, 150), width=1)
        d.ellipse([xb - half(b) - 3, yb - 3, xb - half(b) + 3, yb + 3], fill=(110, 110, 110))
    for i, n in enumerate(nodes):
        x, y = centre(i)
        text = f"{n['label']}\n{n['shape'][0]} ch  {'x'.join(map(str, n['shape'][1:]))}"
        if n["kind"] == "op":
            d.ellipse([x - 16, y - 16, x + 16, y + 16], fill=(230, 230, 230), outline="black")
            d.text((x - 10, y - 6), n["label"], fill="black")
        else:
            d.rectangle([x - BOX_W // 2, y - BOX_H // 2, x + BOX_W // 2, y + BOX_H // 2],
                        fill=COLOURS[n["kind"]])
            d.text((x - BOX_W // 2 + 5, y - BOX_H // 2 + 5), text, fill="white")
    for r, size in enumerate(sizes):
        d.text((4, 50 + r * row_h - 12), "x".join(map(str, size)), fill=(90, 90, 90))
    legend = ", ".join(f"{k}" for k in COLOURS if any(n["kind"] == k for n in nodes))
    d.text((20, height - 40), f"rows: resolution (full at the top); boxes: {legend}; circles: cat (concatenation), "
                              f"+ (sum), up (linear interpolation)", fill="black")
    image.save(out)


def main() -> None:
    for family in sys.argv[1:] or ["fcn", "segnet", "vnet", "unetpp", "pspnet", "hrnet"]:
        out = REPO / "docs" / "figures" / f"family_{family}.png"
        draw(family, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
