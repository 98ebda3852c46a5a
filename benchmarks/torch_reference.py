"""PyTorch twins of four cnnjax models, to time the same network in both frameworks.

`train_throughput.py` times cnnjax's jitted train step. A throughput figure means little alone,
so this module rebuilds lenet5, resnet20, resnet18 and resnet50 in plain torch.nn, layer for layer
as in cnnjax/models (same shapes, parameter counts and forward computation: with the Flax
weights copied in, tests/test_torch_reference.py finds the same logits), and times a PyTorch
train step the way PyTorch users write one. A gap is then the frameworks', not the networks'.

    from torch_reference import create, input_shape, measure_train_step   # benchmarks/ on path
    model = create("resnet20")
    measure_train_step(model, 128, input_shape("resnet20"), threads=2, windows=5,
                       steps_per_window=10)

What differs on purpose, none of it touching the cost of a step: tensors are NCHW (PyTorch's
default; `memory_format=torch.channels_last` tries the other layout), weights start from
PyTorch's default initialization, and batch norm's running variance averages the unbiased batch
variance (PyTorch) rather than the biased one (Flax).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# Flax updates running statistics as m * running + (1 - m) * batch with m = 0.9 (cnnjax's
# Normalization); PyTorch's `momentum` is the weight of the batch, so the same average is 0.1.
BATCH_NORM = {"eps": 1e-5, "momentum": 0.1}
NORMALIZATIONS = ("none", "batch")
# Channels and default image side of each model; lenet5 pads its 28x28 inputs to 32x32 itself.
INPUTS = {"lenet5": (1, 28), "resnet18": (3, 224), "resnet20": (3, 32), "resnet50": (3, 224)}
# ImageNet ResNet v1.5 variants: blocks per stage and whether the blocks are bottlenecks.
IMAGENET_RESNETS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}


def conv_block(
    norm: str,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    relu: bool = True,
) -> nn.Sequential:
    """Convolution -> [batch norm] -> [ReLU], as cnnjax's ConvBlock with `norm` "batch" or
    "none". The convolution has no bias when batch norm follows: batch norm's shift replaces it.
    """
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, bias=norm == "none")]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(cout, **BATCH_NORM))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LeNet5(nn.Module):
    """cnnjax's LeNet5 (max pooling, ReLU, no dropout): `(x [B, 1, H, W]) -> logits`."""

    def __init__(self, num_classes: int, norm: str, input_size: int = 32) -> None:
        super().__init__()
        self.input_size = input_size
        self.features = nn.Sequential(
            conv_block(norm, 1, 6, 5), nn.MaxPool2d(2), conv_block(norm, 6, 16, 5), nn.MaxPool2d(2)
        )
        dense: list[nn.Module] = []
        for in_features, out_features in ((16 * 5 * 5, 120), (120, 84)):
            # Flax's Dense keeps its bias even when batch norm follows, so nn.Linear does too.
            dense.append(nn.Linear(in_features, out_features))
            if norm == "batch":
                dense.append(nn.BatchNorm1d(out_features, **BATCH_NORM))
            dense.append(nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(*dense, nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = max(0, self.input_size - x.shape[2])
        pad_w = max(0, self.input_size - x.shape[3])
        if pad_h or pad_w:  # centred zero padding, as in cnnjax (28x28 -> 32x32)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        x = self.features(x)  # [B, 16, 5, 5]
        # cnnjax flattens NHWC features; flattening in (H, W, C) order here keeps the first dense
        # layer's weights in the same order, so the two are the same network, not merely alike.
        return self.classifier(x.permute(0, 2, 3, 1).flatten(1))


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: keep every `stride`-th pixel, append zero channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class Residual(nn.Module):
    """A post-activation residual block: relu(body(x) + shortcut(x))."""

    def __init__(self, body: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def residual_block(
    norm: str, cin: int, features: int, stride: int, bottleneck: bool, shortcut: str
) -> Residual:
    """A basic block (3x3, 3x3) or a v1.5 bottleneck (1x1, 3x3 carrying the stride, 1x1 x4),
    with an identity, "zero_pad" (option A) or "projection" (1x1 conv) shortcut."""
    cout = 4 * features if bottleneck else features
    if bottleneck:
        body = nn.Sequential(
            conv_block(norm, cin, features, 1),
            conv_block(norm, features, features, 3, stride, 1),
            conv_block(norm, features, cout, 1, relu=False),
        )
    else:
        body = nn.Sequential(
            conv_block(norm, cin, features, 3, stride, 1),
            conv_block(norm, features, features, 3, 1, 1, relu=False),
        )
    if stride == 1 and cin == cout:
        return Residual(body, nn.Identity())
    if shortcut == "zero_pad":
        return Residual(body, ZeroPadShortcut(stride, cout - cin))
    return Residual(body, conv_block(norm, cin, cout, 1, stride, relu=False))


def resnet(
    norm: str,
    stem: nn.Module,
    width: int,
    stages: tuple[int, ...],
    bottleneck: bool,
    shortcut: str,
    num_classes: int,
) -> nn.Sequential:
    """`stem`, stages of residual blocks `width` * 2**stage wide (the first block of every stage
    but the first has stride 2), global average pooling and a dense layer."""
    layers, channels = [stem], width
    for stage, size in enumerate(stages):
        for index in range(size):
            stride = 2 if stage > 0 and index == 0 else 1
            features = width * 2**stage
            layers.append(residual_block(norm, channels, features, stride, bottleneck, shortcut))
            channels = 4 * features if bottleneck else features
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, *pool, nn.Linear(channels, num_classes))


def create(name: str, num_classes: int = 10, normalization: str = "batch") -> nn.Module:
    """The PyTorch twin of cnnjax's `models.create(name, num_classes=..., normalization=...)`."""
    if name not in INPUTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(INPUTS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}"
        )
    norm = normalization
    if name == "lenet5":
        return LeNet5(num_classes, norm)
    if name == "resnet20":  # CifarResNet: 3x3 stem, 16-32-64 filters, 3 basic blocks per stage
        stem = conv_block(norm, 3, 16, 3, 1, 1)
        return resnet(norm, stem, 16, (3, 3, 3), False, "zero_pad", num_classes)
    stages, bottleneck = IMAGENET_RESNETS[name]
    stem = nn.Sequential(conv_block(norm, 3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
    return resnet(norm, stem, 64, stages, bottleneck, "projection", num_classes)


def input_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one example of `name`: its default size, or `image_size` x `image_size`."""
    if name not in INPUTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(INPUTS)}")
    channels, size = INPUTS[name]
    size = image_size or size
    return channels, size, size


def measure_train_step(
    model: nn.Module,
    batch_size: int,
    image_shape: tuple[int, int, int],
    *,
    threads: int,
    windows: int,
    steps_per_window: int,
    warmup: int = 3,
    memory_format: torch.memory_format | None = None,
    seed: int = 0,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    compile_model: bool = False,
) -> dict[str, float | list[float]]:
    """Images/s of SGD train steps (momentum 0.9, lr 0.01, cross-entropy) on one random batch.

    Returns the median over `windows` timed windows of `steps_per_window` steps (after `warmup`
    untimed steps), each window's images/s, and the seconds of the first step (PyTorch's
    one-time costs, the counterpart of jit compilation). Sets torch's global thread count and
    trains `model` (converted to `memory_format`) in place on `device` ("cpu", "cuda"); on a
    GPU the clock reads wait for the queued kernels. `autocast_dtype` (e.g. torch.bfloat16) runs
    the forward pass and the loss under `torch.autocast`, as PyTorch's mixed precision does
    (weights and optimizer stay float32); `compile_model` times `torch.compile(model)`, whose
    compilation then falls in the first step.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    images = torch.randn(batch_size, *image_shape).to(device)
    labels = torch.randint(0, num_classes, (batch_size,)).to(device)
    model = model.to(device)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
        images = images.contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    forward = torch.compile(model) if compile_model else model
    device_type = torch.device(device).type
    synchronize = torch.cuda.synchronize if device_type == "cuda" else lambda: None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    synchronize()
    first_step_seconds = time.perf_counter() - start
    for _ in range(warmup):
        step()
    speeds = []
    for _ in range(windows):
        synchronize()
        start = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        synchronize()
        speeds.append(steps_per_window * batch_size / (time.perf_counter() - start))
    return {
        "images_per_sec_median": statistics.median(speeds),
        "images_per_sec": speeds,
        "first_step_seconds": first_step_seconds,
    }
