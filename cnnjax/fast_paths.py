"""Fast paths for XLA:CPU, switchable, each computing the same function as the plain path.

- **YNNPACK dots and reductions** (the process-wide XLA flag
  `--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE`;
  `CNNJAX_YNN=0` leaves XLA's own choice). XLA:CPU then hands dot fusions, including the
  convolutions it rewrites into dots (most weight gradients), and reductions to the YNNPACK
  library (jaxlib 0.10's own default hands it single dots, convolutions and reductions).
  Measured on 2 CPU cores (AVX-512), images/s of one train step: LeNet-5 (batch 256) 11.6k ->
  17.5k, ResNet-20 (batch 128) 319 -> 442. Reductions stay with YNNPACK for accuracy: with dots
  alone (`LIBRARY_FUSION_TYPE_DOT`, the flag of an earlier cnnjax) batch norm's statistics fell
  back to XLA's own loops, whose float32 sums moved ResNet-20's gradient (tanh, 16x16) 1.9e-5
  from float64 instead of 8.6e-6 (7.8e-6 without the flag). Only added for the jaxlib versions
  it was tested with (XLA aborts on an unknown flag) and only before the backend starts (flags
  are read once per process).
- **Space-to-depth convolutions** (cnnjax/models/conv_lowering.py, used by `ConvBlock`):
  stride-1 convolutions between few channels (LeNet-5's, a CIFAR stem) computed over 2x2 pixel
  blocks folded into channels, forward and input gradient (LeNet-5's first layer forward 4.75
  -> 1.25 ms). Read while tracing, like the pooling below.
- **Pooling by reshape** (`layers.pool`): non-overlapping windows as a reshape and a reduction
  instead of `reduce_window` (one LeNet-5 step 108 -> 71 ms). Read while tracing, so
  `use(False)` around a trace gives the plain form in the same process.
- **Persistent compilation cache** (`enable_compilation_cache`, set by `cnnjax train` from
  `train.compilation_cache_dir`): a second run of the same program loads its executables from
  disk instead of compiling them (ResNet-20's gradient: 4.4 s -> 1.1 s).
- **Decoded-split cache** (cnnjax/data/decoded_cache.py): decoded images kept as .npz beside the
  prepared TFDS dataset (Fashion-MNIST's training split: 18 s of PNG decoding -> 0.8 s).

`CNNJAX_FAST_PATHS=0` in the environment turns the traced fast paths, the decoded cache and the
YNNPACK flag off (the plain paths), which is what benchmarks/suite.py compares against;
tests/test_fast_paths.py and tests/test_decoded_cache.py check that each gives the same results.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import os
import sys
from collections.abc import Iterator

ENV_VARIABLE = "CNNJAX_FAST_PATHS"
YNN_ENV_VARIABLE = "CNNJAX_YNN"  # 0: leave XLA's own choice of what YNNPACK computes
YNN_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"
)
# jaxlib releases whose XLA knows the flag (checked by tests/test_fast_paths.py): an XLA that
# does not know a flag aborts the process, so newer releases run without it until tested.
_FLAG_TESTED_JAXLIB = ("0.10.",)
_COMPILATION_CACHE_MIN_SECONDS = 0.5  # smaller programs compile faster than a disk read pays

_TRACE_OVERRIDE: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "cnnjax_fast_paths", default=None
)


def _is_off(value: str) -> bool:
    return value.strip().lower() in ("0", "false", "off", "no")


def enabled_by_environment() -> bool:
    """False when `CNNJAX_FAST_PATHS` is 0 / false / off, else True."""
    return not _is_off(os.environ.get(ENV_VARIABLE, "1"))


def active() -> bool:
    """Whether traced fast paths (block convolutions, reshape pooling) are on: `use(...)` if
    set, else the environment."""
    override = _TRACE_OVERRIDE.get()
    return enabled_by_environment() if override is None else override


@contextlib.contextmanager
def use(enabled: bool) -> Iterator[None]:
    """Traces inside this block use the fast (True) or plain (False) traced paths."""
    token = _TRACE_OVERRIDE.set(enabled)
    try:
        yield
    finally:
        _TRACE_OVERRIDE.reset(token)


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def add_xla_flags() -> bool:
    """Adds the YNNPACK flag to XLA_FLAGS; True when it is (now or already) there.

    Does nothing when CNNJAX_YNN=0, when fast paths are off, when the user already chose a
    `xla_cpu_experimental_ynn_fusion_type`, for untested jaxlib versions, or once the backend
    has started (too late for flags to take effect).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags.split():
        return True
    if (
        _is_off(os.environ.get(YNN_ENV_VARIABLE, "1"))
        or not enabled_by_environment()
        or "xla_cpu_experimental_ynn_fusion_type" in flags
        or not _jaxlib_version().startswith(_FLAG_TESTED_JAXLIB)
        or _backend_started()
    ):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True


def enable_compilation_cache(directory: str) -> bool:
    """Keeps compiled executables in `directory` (created if missing) across processes.

    A directory that cannot be created only costs the speed-up: a one-line warning, False.
    """
    import jax

    directory = os.path.expanduser(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        print(
            f"warning: compilation cache off ({error}); set --config.train.compilation_cache_dir"
            " to a writable folder, or to '' to silence this",
            file=sys.stderr,
        )
        return False
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _COMPILATION_CACHE_MIN_SECONDS)
    return True
