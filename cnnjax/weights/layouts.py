"""Where each tensor of a torchvision (or timm) state dict lives in a cnnjax model.

A layout is the list of a model's layers in both namings: a `ConvLayer` pairs a torch
convolution (and the batch norm after it) with a cnnjax `ConvBlock`, a `DenseLayer` a torch
`Linear` with a Flax `Dense`. It is derived from the module's own fields (stage sizes, depth,
auxiliary heads) and the order in which Flax names submodules (`ConvBlock_0`, `ConvBlock_1`, ...
in call order), so it covers every depth of a family at once. `cnnjax/weights/convert.py` moves
the tensors; tests/test_weights.py checks each layout against torch's logits.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from cnnjax.errors import UserError
from cnnjax.models.alexnet import AlexNet
from cnnjax.models.googlenet import INCEPTION_3, INCEPTION_4, INCEPTION_5, GoogLeNet
from cnnjax.models.inception_v3 import InceptionV3
from cnnjax.models.resnet import ResNet
from cnnjax.models.vgg import CONFIGS as VGG_CONFIGS
from cnnjax.models.vgg import VGG

FlaxPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """torch `conv` (weight [O, I, kh, kw], maybe a bias) and `norm` (a BatchNorm2d, or None)
    <-> the cnnjax ConvBlock at `block`."""

    conv: str
    norm: str | None
    block: FlaxPath


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """torch `linear` (weight [out, in]) <-> the Flax Dense at `dense`. `flattened`: the
    (C, H, W) feature map torch flattens into this layer's input (cnnjax flattens H, W, C)."""

    linear: str
    dense: FlaxPath
    flattened: tuple[int, int, int] | None = None


Layer = ConvLayer | DenseLayer


def _block(prefix: str, block: FlaxPath) -> ConvLayer:
    """torchvision's BasicConv2d (GoogLeNet, Inception v3): `prefix.conv` and `prefix.bn`."""
    return ConvLayer(f"{prefix}.conv", f"{prefix}.bn", block)


def resnet_layout(model: ResNet) -> list[Layer]:
    layers: list[Layer] = [ConvLayer("conv1", "bn1", ("ConvBlock_0",))]
    kind = "Bottleneck" if model.bottleneck else "BasicBlock"
    convs = 3 if model.bottleneck else 2
    expansion = 4 if model.bottleneck else 1
    index, channels = 0, model.width
    for stage, blocks in enumerate(model.stage_sizes):
        features = model.width * 2**stage
        for position in range(blocks):
            name, torch = (f"{kind}_{index}",), f"layer{stage + 1}.{position}"
            for k in range(convs):
                layers.append(
                    ConvLayer(
                        f"{torch}.conv{k + 1}", f"{torch}.bn{k + 1}", (*name, f"ConvBlock_{k}")
                    )
                )
            strides = 2 if stage > 0 and position == 0 else 1
            if strides != 1 or channels != features * expansion:  # a projection shortcut
                block = (*name, f"ConvBlock_{convs}")
                layers.append(ConvLayer(f"{torch}.downsample.0", f"{torch}.downsample.1", block))
            channels, index = features * expansion, index + 1
    return [*layers, DenseLayer("fc", ("Dense_0",))]


def vgg_layout(model: VGG) -> list[Layer]:
    layers: list[Layer] = []
    batch_norm = model.normalization == "batch"
    position = block = 0
    for item in VGG_CONFIGS[model.depth]:
        if item == "M":
            position += 1
            continue
        norm = f"features.{position + 1}" if batch_norm else None
        layers.append(ConvLayer(f"features.{position}", norm, (f"ConvBlock_{block}",)))
        position, block = position + (3 if batch_norm else 2), block + 1
    last = VGG_CONFIGS[model.depth][-2] // model.width_divisor
    return [
        *layers,
        DenseLayer("classifier.0", ("Dense_0",), (last, 7, 7)),
        DenseLayer("classifier.3", ("Dense_1",)),
        DenseLayer("classifier.6", ("Dense_2",)),
    ]


def alexnet_layout(model: AlexNet) -> list[Layer]:
    if model.paper:
        raise UserError("torchvision's AlexNet is the 64-192-384-256-256 form: use model alexnet")
    positions = (0, 3, 6, 8, 10)
    layers: list[Layer] = [
        ConvLayer(f"features.{p}", None, (f"ConvBlock_{i}",)) for i, p in enumerate(positions)
    ]
    return [
        *layers,
        DenseLayer("classifier.1", ("Dense_0",), (256, 6, 6)),
        DenseLayer("classifier.4", ("Dense_1",)),
        DenseLayer("classifier.6", ("Dense_2",)),
    ]


def googlenet_layout(model: GoogLeNet) -> list[Layer]:
    layers: list[Layer] = [
        _block(name, (f"ConvBlock_{i}",)) for i, name in enumerate(("conv1", "conv2", "conv3"))
    ]
    names = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
    assert len(names) == len(INCEPTION_3) + len(INCEPTION_4) + len(INCEPTION_5)
    # Flax's call order inside a module: branch1, branch2's 1x1 then 3x3, branch3's two, the
    # pool branch's projection.
    branches = ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1", "branch4.1")
    for index, name in enumerate(names):
        for k, branch in enumerate(branches):
            layers.append(
                _block(f"inception{name}.{branch}", (f"Inception_{index}", f"ConvBlock_{k}"))
            )
    if model.aux_logits:
        for head in (0, 1):
            flax, torch = f"AuxClassifier_{head}", f"aux{head + 1}"
            layers += [
                _block(f"{torch}.conv", (flax, "ConvBlock_0")),
                DenseLayer(f"{torch}.fc1", (flax, "Dense_0"), (128, 4, 4)),
                DenseLayer(f"{torch}.fc2", (flax, "Dense_1")),
            ]
    return [*layers, DenseLayer("fc", ("Dense_0",))]


# Inception v3's modules, torch names in the order cnnjax calls (and so names) their ConvBlocks.
_INCEPTION_V3_BLOCKS = {
    "InceptionA": (
        "branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
        "branch3x3dbl_3", "branch_pool",
    ),
    "InceptionB": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "InceptionC": (
        "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
        "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch1x1", "branch_pool",
    ),
    "InceptionD": (
        "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch3x3_1", "branch3x3_2",
        "branch7x7x3_4",
    ),
    "InceptionE": (
        "branch3x3_1", "branch3x3dbl_1", "branch3x3dbl_2", "branch1x1", "branch3x3_2a",
        "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool",
    ),
}  # fmt: skip
_INCEPTION_V3_MIXED = (
    ("Mixed_5b", "InceptionA_0"),
    ("Mixed_5c", "InceptionA_1"),
    ("Mixed_5d", "InceptionA_2"),
    ("Mixed_6a", "InceptionB_0"),
    ("Mixed_6b", "InceptionC_0"),
    ("Mixed_6c", "InceptionC_1"),
    ("Mixed_6d", "InceptionC_2"),
    ("Mixed_6e", "InceptionC_3"),
    ("Mixed_7a", "InceptionD_0"),
    ("Mixed_7b", "InceptionE_0"),
    ("Mixed_7c", "InceptionE_1"),
)


def inception_v3_layout(model: InceptionV3) -> list[Layer]:
    stem = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
    layers: list[Layer] = [_block(name, (f"ConvBlock_{i}",)) for i, name in enumerate(stem)]
    for torch, flax in _INCEPTION_V3_MIXED:
        for k, branch in enumerate(_INCEPTION_V3_BLOCKS[flax.rsplit("_", 1)[0]]):
            layers.append(_block(f"{torch}.{branch}", (flax, f"ConvBlock_{k}")))
    if model.aux_logits:
        layers += [
            _block("AuxLogits.conv0", ("InceptionAux_0", "ConvBlock_0")),
            _block("AuxLogits.conv1", ("InceptionAux_0", "ConvBlock_1")),
            DenseLayer("AuxLogits.fc", ("InceptionAux_0", "Dense_0")),
        ]
    return [*layers, DenseLayer("fc", ("Dense_0",))]


def torchvision_layout(model: nn.Module) -> list[Layer]:
    """The layers of `model` (a cnnjax ResNet, VGG, AlexNet, GoogLeNet or InceptionV3) in
    torchvision's naming."""
    for family, layout in (
        (ResNet, resnet_layout),
        (VGG, vgg_layout),
        (AlexNet, alexnet_layout),
        (GoogLeNet, googlenet_layout),
        (InceptionV3, inception_v3_layout),
    ):
        if isinstance(model, family):
            return layout(model)
    raise UserError(
        f"{type(model).__name__} has no torchvision counterpart: weights import into ResNet, "
        "VGG, AlexNet, GoogLeNet and Inception v3 models"
    )


# timm names the same tensors as torchvision except in VGG's classifier, which timm builds as
# convolutions (a 7x7 conv on the 7x7 map is the torchvision Linear with the same weights).
_TIMM_VGG = {
    "classifier.0": "pre_logits.fc1",
    "classifier.3": "pre_logits.fc2",
    "classifier.6": "head.fc",
}


def timm_layout(model: nn.Module) -> list[Layer]:
    """The layers of `model` in timm's naming (ResNets, wide ResNets, VGG, Inception v3)."""
    if isinstance(model, (AlexNet, GoogLeNet)):
        raise UserError(
            f"timm has no {type(model).__name__}: import it with --from=torchvision:..."
        )
    layers = torchvision_layout(model)
    if isinstance(model, VGG):
        layers = [
            dataclasses.replace(layer, linear=_TIMM_VGG[layer.linear])
            if isinstance(layer, DenseLayer)
            else layer
            for layer in layers
        ]
    return layers
