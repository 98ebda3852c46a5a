"""Other ways to compute ResNet-20's 3x3 convolutions on XLA:CPU, timed against XLA's own.

    .venv/bin/python benchmarks/convolution_forms.py      # writes results/convolution_forms.json

For one stride-1 3x3 "SAME" convolution at each of CIFAR ResNet-20's three widths (batch 128:
32x32x16, 16x16x32, 8x8x64, C_in = C_out), the forward pass, the input gradient and the weight
gradient of each form, in milliseconds (median of 5 windows of 20 calls, one jitted function per
measurement, cnnjax's YNNPACK flag on), and each form's largest difference from XLA's forward
relative to its largest output:

- `xla`: `lax.conv_general_dilated`, what the models use;
- `winograd_f23`: Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016): 16 strided
  4x4-tile views of the padded input, transformed (B^T d B), 16 batched dots with the
  transformed kernels (G g G^T), and the inverse transform (A^T m A) of each 2x2 output tile;
  2.25x fewer multiply-adds in the dots, gradients by autodiff (so the weight gradient is 16
  dots that contract over the batch and tiles, with no transposes of the activations);
- `im2col`: the 9 shifted copies concatenated along channels and one dot.

Issue 20 tried these to lift ResNet-20's train step to PyTorch's speed; benchmarks/README.md
("ResNet-20 on XLA:CPU") says how far each got. Neither is used by the models.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ((128, 32, 16), (128, 16, 32), (128, 8, 64))  # batch, side, channels
WINDOWS, CALLS = 5, 20

# F(2x2, 3x3) transforms (Lavin & Gray 2016, section 4.1).
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(coefficients, terms):
    """sum(c * t) without the zero terms and with +-1 as additions: what XLA fuses best."""
    total = None
    for c, term in zip(coefficients, terms, strict=True):
        if c == 0:
            continue
        term = term if c == 1 else -term if c == -1 else c * term
        total = term if total is None else total + term
    return total


def xla_convolution(x, kernel):
    from jax import lax

    return lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def winograd_f23(x, kernel):
    """3x3 stride-1 SAME convolution of x [N, H, W, C] (H, W even) with kernel [3, 3, C, O]."""
    import jax.numpy as jnp
    import numpy as np

    n, height, width, channels = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # tiles[a][b]: element (a, b) of every 4x4 input tile; tiles start every 2 pixels.
    tiles = [
        [padded[:, a : a + height : 2, b : b + width : 2, :] for b in range(4)] for a in range(4)
    ]
    rows = [[_combine(B_T[p], [tiles[a][b] for a in range(4)]) for b in range(4)] for p in range(4)]
    transformed = jnp.stack([_combine(B_T[q], rows[p]) for p in range(4) for q in range(4)])
    transformed = transformed.reshape(16, -1, channels)
    g = np.asarray(G, np.float32)
    kernel_t = jnp.einsum("pi,ijco,qj->pqco", g, kernel, g).reshape(16, channels, -1)
    products = jnp.einsum("tnc,tco->tno", transformed, kernel_t)
    products = products.reshape(4, 4, n, height // 2, width // 2, -1)
    a_t = np.asarray(A_T, np.float32)
    out_tiles = jnp.einsum("rp,pq...,sq->rs...", a_t, products, a_t)  # [2, 2, N, H/2, W/2, O]
    return out_tiles.transpose(2, 3, 0, 4, 1, 5).reshape(n, height, width, -1)


def im2col(x, kernel):
    import jax.numpy as jnp

    n, height, width, channels = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [padded[:, i : i + height, j : j + width, :] for i in range(3) for j in range(3)]
    patches = jnp.concatenate(shifted, axis=-1)
    return jnp.dot(patches, kernel.reshape(9 * channels, -1))


FORMS = {"xla": xla_convolution, "winograd_f23": winograd_f23, "im2col": im2col}


def _milliseconds(function, *args) -> float:
    import jax

    jax.block_until_ready(function(*args))
    times = []
    for _ in range(WINDOWS):
        start = time.perf_counter()
        for _ in range(CALLS):
            result = function(*args)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - start) / CALLS * 1e3)
    return round(statistics.median(times), 2)


def measure(batch: int, side: int, channels: int) -> dict:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, channels))
    kernel = jax.random.normal(keys[1], (3, 3, channels, channels)) * 0.1
    cotangent = jax.random.normal(keys[2], (batch, side, side, channels))
    reference = xla_convolution(x, kernel)
    row = {}
    for name, form in FORMS.items():
        forward = jax.jit(form)
        input_gradient = jax.jit(lambda x, k, g, f=form: jax.vjp(lambda x: f(x, k), x)[1](g)[0])
        weight_gradient = jax.jit(lambda x, k, g, f=form: jax.vjp(lambda k: f(x, k), k)[1](g)[0])
        difference = jnp.max(jnp.abs(forward(x, kernel) - reference)) / jnp.max(jnp.abs(reference))
        row[name] = {
            "forward_ms": _milliseconds(forward, x, kernel),
            "input_gradient_ms": _milliseconds(input_gradient, x, kernel, cotangent),
            "weight_gradient_ms": _milliseconds(weight_gradient, x, kernel, cotangent),
            "max_relative_difference": float(difference),
        }
    return row


def main() -> None:
    sys.path.insert(0, ROOT)
    from cnnjax import fast_paths

    fast_paths.enable()  # the YNNPACK flag, as in `cnnjax train`
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import suite

    results = {"machine": suite._machine(), "windows": WINDOWS, "calls_per_window": CALLS}
    for batch, side, channels in SHAPES:
        shape = f"{batch}x{side}x{side}x{channels}"
        results[shape] = measure(batch, side, channels)
        print(shape)
        for name, row in results[shape].items():
            print(
                f"  {name:<13} forward {row['forward_ms']:7.2f}  input grad "
                f"{row['input_gradient_ms']:7.2f}  weight grad {row['weight_gradient_ms']:7.2f} ms"
                f"  (max relative difference {row['max_relative_difference']:.1e})",
                flush=True,
            )
    path = os.path.join(ROOT, "benchmarks", "results", "convolution_forms.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
