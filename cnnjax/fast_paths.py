"""Fast paths for XLA:CPU, each computing the same function as the plain path.

- **YNNPACK dots and reductions** (the process-wide XLA flag
  `--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE`;
  `CNNJAX_YNN=0` leaves XLA's own choice). XLA:CPU then hands dot fusions, including the
  convolutions it rewrites into dots (most weight gradients), and reductions to the YNNPACK
  library (jaxlib 0.10's own default hands it single dots, convolutions and reductions).
  Reductions stay with YNNPACK for accuracy as well as speed: with dots alone (the flag of an
  earlier cnnjax) batch norm's statistics fell back to XLA's own loops, whose float32 sums land
  further from float64. XLA reads its flags once, when the backend starts, so `enable()` adds the
  flag to XLA_FLAGS before that: the `cnnjax` command calls it first thing, and importing cnnjax
  changes nothing. Only for the jaxlib versions it was tested with (XLA aborts on an unknown
  flag).
- **Block convolutions and pooling by reshape**: forms of the model's own operations, chosen by
  each model's `layer_options` field (`LayerOptions`, cnnjax/models/layers.py) from
  `config.model.fast_paths`. Being part of the model, they are part of what `jax.jit` caches.
- **Persistent compilation cache** (`enable_compilation_cache`, set by `cnnjax train` from
  `train.compilation_cache_dir`): a second run of the same program loads its executables from
  disk instead of compiling them.
- **Decoded-split cache** (cnnjax/data/decoded_cache.py): decoded images kept as .npz beside the
  prepared TFDS dataset, so that a run skips decoding the PNGs.

`CNNJAX_FAST_PATHS=0` in the environment leaves out the YNNPACK flag and the decoded cache;
benchmarks/suite.py compares that, with plain layer options, against the default.
tests/test_fast_paths.py and tests/test_decoded_cache.py check that each gives the same results.
What each is worth, and where and when it was measured: benchmarks/results/fast_paths.json.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

from cnnjax.parallel import accelerators

ENV_VARIABLE = "CNNJAX_FAST_PATHS"
YNN_ENV_VARIABLE = "CNNJAX_YNN"  # 0: leave XLA's own choice of what YNNPACK computes
YNN_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"
)
# jaxlib releases whose XLA knows the flag (checked by tests/test_fast_paths.py, with 0.10.2 and
# 0.12.0.1): an XLA that does not know a flag aborts the process, so other releases run without
# it until tested.
_FLAG_TESTED_JAXLIB = ("0.10.", "0.12.0")
# Every program: reading one back takes milliseconds, and the small ones (evaluation, state
# assembly, host transfers) add up to a second of compiling at each start of `cnnjax train`.
_COMPILATION_CACHE_MIN_SECONDS = 0.0


def _is_off(value: str) -> bool:
    return value.strip().lower() in ("0", "false", "off", "no")


def enabled_by_environment() -> bool:
    """False when `CNNJAX_FAST_PATHS` is 0 / false / off, else True: whether the YNNPACK flag
    and the decoded cache may be used (the traced forms are model fields instead)."""
    return not _is_off(os.environ.get(ENV_VARIABLE, "1"))


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


def enable() -> bool:
    """Adds the YNNPACK flag to XLA_FLAGS; True when it is (now or already) there.

    Call it before JAX starts its backend (the first computation or device query): XLA reads
    its flags once per process. Entry points call it first (`cnnjax`'s `run()`, the test suite's
    conftest, the benchmarks), so that every process of a comparison computes alike. Does nothing
    when CNNJAX_YNN=0, when CNNJAX_FAST_PATHS=0, when the user already chose a
    `xla_cpu_experimental_ynn_fusion_type`, for untested jaxlib versions, or once the backend
    has started (too late for flags to take effect), or when the process will compute on a GPU or
    TPU (an accelerator with its JAX plugin installed, unless JAX_PLATFORMS asks for the CPU).
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
        or not accelerators.runs_on_cpu_only()
    ):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True


def enable_compilation_cache(directory: str) -> bool:
    """Keeps compiled executables in `directory` (created if missing) across processes.

    A leading `~/.cache` means $XDG_CACHE_HOME when that is set (the freedesktop convention).
    A directory that cannot be created only costs the speed-up: a one-line warning, False.
    """
    import jax

    cache_home = os.environ.get("XDG_CACHE_HOME")
    if cache_home and directory.startswith("~/.cache/"):
        directory = os.path.join(cache_home, directory[len("~/.cache/") :])
    directory = os.path.expanduser(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        print(
            f"warning: compilation cache off ({error}); set config.train.compilation_cache_dir"
            " to a writable folder, or to '' to silence this",
            file=sys.stderr,
        )
        return False
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _COMPILATION_CACHE_MIN_SECONDS)
    return True
