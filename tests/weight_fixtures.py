"""Weights for the import checks: made with numpy from a seed, in the torchvision layout, so that
torch (once, when the fixture is made) and cnnjax (in every run of the suite) start from the same
tensors. tests/fixtures/make_weight_fixtures.py stores torch's logits for them."""

from __future__ import annotations

import os
import zlib

import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_logits.npz")
# The smallest inputs each architecture takes (Inception v3 needs 75x75), batch 2.
INPUT_SIZES = {
    **{f"resnet{d}": 64 for d in (18, 34, 50, 101, 152)},
    "wide_resnet50_2": 64,
    "wide_resnet101_2": 64,
    **{f"vgg{d}{bn}": 32 for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "alexnet": 64,
    "googlenet": 32,
    "inception_v3": 75,
}


_BLOCK = 1_000_003


def fixture_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Tensors of `shapes` (torch names -> shapes): He-scaled normal weights, batch norm scales
    and variances in [0.5, 1.5), small biases and means; each from its own generator (seeded by
    its name), so the set of names, not their order, fixes the values."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, np.int64)
        elif key.endswith(".weight") and len(shape) == 1 and key.startswith("layer"):
            # Batch norm scales inside ResNet blocks: small, or the residual sums grow by ~1.4x
            # per block (to 1e12 after ResNet-152's 50 blocks).
            out[key] = rng.uniform(0.1, 0.4, shape).astype(np.float32)
        elif key.endswith("running_var") or key.endswith(".weight") and len(shape) == 1:
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith(("running_mean", ".bias")):
            out[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
        else:
            fan_in, size = int(np.prod(shape[1:])), int(np.prod(shape))
            # Large tensors (VGG's 103M-weight fc6) repeat a block of a prime length, which no
            # axis divides, so that a misplaced axis still shows: 10x faster to make.
            weights = rng.standard_normal(min(size, _BLOCK), dtype=np.float32)
            weights = np.resize(weights, shape) if size > _BLOCK else weights.reshape(shape)
            out[key] = weights * np.float32(np.sqrt(2.0 / fan_in))
    return out


def fixture_input(arch: str) -> np.ndarray:
    """The input of `arch`'s check: float32 [2, S, S, 3] (NHWC)."""
    size = INPUT_SIZES[arch]
    return np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
