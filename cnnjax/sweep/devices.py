"""The accelerators of this machine, and how `cnnjax sweep --workers=N` deals them out.

The launcher counts devices without JAX: importing JAX here would open every GPU (and lock every
TPU chip) in the launcher's own process, leaving nothing to the runs. NVIDIA GPUs come from
`nvidia-smi` (only those an already-set CUDA_VISIBLE_DEVICES shows); TPU chips from the device
files of a Cloud TPU VM (`/dev/accel*` on v2-v4, `/dev/vfio/<n>` on v5e and later).

G devices and N workers: each worker gets its own G // N of them, and every run it starts sees
only those (CUDA_VISIBLE_DEVICES; on a TPU VM libtpu's TPU_VISIBLE_CHIPS and friends). More
workers than GPUs share them round-robin only when asked (`--share_devices`); TPU chips are never
shared, since libtpu lets only one process open a chip.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cnnjax.errors import UserError

GPU = "GPU"
TPU = "TPU chip"
TPU_DEVICE_PATTERNS = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
# Sub-slice shapes libtpu accepts for a process of 1, 2 or 4 chips of one host (x,y,z in chips):
# https://gist.github.com/skye/f82ba45d2445bb19d53545538754f9a3 (linked from JAX's Cloud TPU
# notes), and jax/_src/test_multiprocess.py, which runs one process per chip the same way.
_TPU_CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}
# libtpu's own default port; each worker's runs get the next one so they do not collide.
_TPU_FIRST_PORT = 8476
# JAX preallocates this fraction of a GPU's memory in each process (the default of
# XLA_PYTHON_CLIENT_MEM_FRACTION); the rest holds the CUDA context and cuDNN's workspace.
_JAX_GPU_MEMORY_FRACTION = 0.75


@dataclass(frozen=True)
class Accelerators:
    """This machine's accelerators of one kind, named as its visibility variable names them."""

    kind: str  # GPU or TPU
    ids: tuple[str, ...]  # CUDA_VISIBLE_DEVICES entries (indices or UUIDs), or TPU chip numbers


@dataclass(frozen=True)
class DeviceSlot:
    """The devices that one worker's runs see, one after the other."""

    kind: str
    ids: tuple[str, ...]
    worker: int
    sharers: int = 1  # workers whose runs use these same devices at the same time
    whole_host: bool = False  # every device of the machine: nothing to restrict


def find_accelerators(
    environ: Mapping[str, str] | None = None,
    *,
    nvidia_smi: str = "nvidia-smi",
    tpu_device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS,
    tpu_runtime: str = "libtpu",
) -> Accelerators | None:
    """The GPUs (first) or TPU chips the runs started from here can use; None when there are none.

    `nvidia_smi` is looked up on `environ`'s PATH; TPU chips count only where the Python module
    `tpu_runtime` is installed (without it the runs would not use them, and a host that hands
    other hardware to VFIO is not taken for a TPU VM).
    """
    environ = os.environ if environ is None else environ
    gpus = _gpus(environ, nvidia_smi)
    if gpus:
        return Accelerators(GPU, gpus)
    chips = _tpu_chips(environ, tpu_device_patterns, tpu_runtime)
    if chips:
        return Accelerators(TPU, chips)
    return None


def _gpus(environ: Mapping[str, str], nvidia_smi: str) -> tuple[str, ...]:
    program = shutil.which(nvidia_smi, path=environ.get("PATH"))
    if program is None:
        return ()
    try:
        listing = subprocess.run(
            [program, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):  # e.g. no driver loaded: JAX finds none either
        return ()
    indices = tuple(line.strip() for line in listing.splitlines() if line.strip().isdigit())
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return indices
    # CUDA's reading: the listed devices, up to the first entry that names none ("" or "-1"
    # hide every GPU). Entries may be indices or GPU-/MIG- UUIDs; both pass through unchanged.
    ids = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry not in indices and not entry.startswith(("GPU-", "MIG-")):
            break
        ids.append(entry)
    return tuple(ids)


def _tpu_chips(
    environ: Mapping[str, str], patterns: Sequence[str], runtime: str
) -> tuple[str, ...]:
    count = next((len(found) for found in map(glob.glob, patterns) if found), 0)
    if not count or importlib.util.find_spec(runtime) is None:
        return ()
    visible = environ.get("TPU_VISIBLE_CHIPS")
    if visible is not None:
        return tuple(entry.strip() for entry in visible.split(",") if entry.strip())
    return tuple(str(chip) for chip in range(count))


def _noun(kind: str, count: int) -> str:
    return kind if count == 1 else f"{kind}s"


def device_slots(
    accelerators: Accelerators | None, workers: int, *, share: bool = False
) -> list[DeviceSlot]:
    """One slot per worker: disjoint sets of G // N devices, or with `share` (GPUs only) and
    more workers than GPUs, one GPU each round-robin. [] when there are no accelerators.

    Raises UserError (one line) for more workers than devices without `share`, or on TPU.
    """
    if accelerators is None or not accelerators.ids:
        return []
    kind, ids = accelerators.kind, accelerators.ids
    total = len(ids)
    if workers <= total:
        size = total // workers
        if kind == TPU:  # libtpu takes only whole sub-slices (1, 2 or 4 chips) per process
            size = total if workers == 1 else max(n for n in _TPU_CHIP_BOUNDS if n <= size)
        return [
            DeviceSlot(kind, ids[i * size : (i + 1) * size], i, whole_host=size == total)
            for i in range(workers)
        ]
    have = f"--workers={workers} but this machine has {total} {_noun(kind, total)}"
    if kind == TPU:
        raise UserError(f"{have}, and runs cannot share a TPU chip: use --workers<={total}")
    if not share:
        raise UserError(
            f"{have}: use --workers<={total}, or --share_devices to let runs share them"
        )
    owners = [ids[i % total] for i in range(workers)]
    return [
        DeviceSlot(kind, (owner,), i, sharers=owners.count(owner)) for i, owner in enumerate(owners)
    ]


def slot_environment(slot: DeviceSlot, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that confine a run to `slot` (to add to `environ`, the launcher's)."""
    if slot.kind == GPU:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(slot.ids)}
        # A worker alone on its GPUs keeps JAX's preallocation: nobody else uses them, and it is
        # what `cnnjax train` does by itself. k workers on one GPU would each grab 75% of it, so
        # each preallocates a fixed 1/k of that instead, rather than turning preallocation off:
        # with on-demand allocation every run's pool grows and is never given back, so two runs
        # that fit alone can run each other out of memory hours in, depending on timing; a fixed
        # share makes a run that needs more fail at once, the same way every time. A fraction
        # the user set is kept.
        if slot.sharers > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in environ:
            fraction = _JAX_GPU_MEMORY_FRACTION / slot.sharers
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3g}"
        return env
    if slot.whole_host:  # one worker: libtpu's defaults already give it every chip
        return {}
    port = _TPU_FIRST_PORT + slot.worker
    return {
        "TPU_VISIBLE_CHIPS": ",".join(slot.ids),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_CHIP_BOUNDS[len(slot.ids)],
        "TPU_PROCESS_BOUNDS": "1,1,1",  # each run is a slice of its own, talking to no other
        "TPU_PROCESS_PORT": str(port),
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        # libtpu otherwise refuses to load in a second process of the VM (/tmp/libtpu_lockfile).
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }


def describe_slots(slots: Sequence[DeviceSlot], environ: Mapping[str, str]) -> list[str]:
    """One line per worker: its devices and the variables that confine its runs to them."""
    lines = []
    for slot in slots:
        env = slot_environment(slot, environ)
        settings = " ".join(f"{name}={value}" for name, value in env.items())
        shared = f", shared by {slot.sharers} workers" if slot.sharers > 1 else ""
        devices = f"{_noun(slot.kind, len(slot.ids))} {','.join(slot.ids)}{shared}"
        lines.append(f"  worker {slot.worker}: {devices}" + (f"  ({settings})" if settings else ""))
    return lines
