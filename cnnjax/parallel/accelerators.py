"""Which accelerators the machine has and which ones JAX uses: the line every run prints at its
start, and the warning for a GPU or TPU that JAX left idle (usually the CPU-only jaxlib).

The hardware probe reads only device files (no JAX, no subprocess), so the `cnnjax` entry point
can ask it before JAX starts: XLA:CPU's flag is then added only when the run will be on the CPU
(cnnjax/fast_paths.py).
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
from collections.abc import Mapping

# PCI vendor id of Google's TPU chips, as their VMs list them under /sys/bus/pci/devices.
GOOGLE_PCI_VENDOR = "0x1ae0"
# The JAX plugins of each kind of accelerator (pyproject.toml's cuda12, cuda13 and tpu extras).
PLUGINS = {
    "NVIDIA GPU": ("jax-cuda12-plugin", "jax-cuda13-plugin"),
    "TPU": ("libtpu", "libtpu-nightly"),
}
FIX = {
    "NVIDIA GPU": 'pip install -e ".[cuda13]" (".[cuda12]" for drivers older than 580), or '
    "rerun ./quickstart.sh, which picks the build from nvidia-smi",
    "TPU": 'pip install -e ".[tpu]", or rerun ./quickstart.sh on the TPU VM',
}


def present_accelerators(dev: str = "/dev", pci_devices: str = "/sys/bus/pci/devices") -> list[str]:
    """The kinds of accelerator this machine has ("NVIDIA GPU", "TPU"), from its device files:
    /dev/nvidia0, 1, ... for NVIDIA GPUs; /dev/accel* (TPU v2-v4) or /dev/vfio/<n> (v5e and later)
    beside a PCI device of Google's vendor id for TPUs."""
    kinds = []
    if glob.glob(os.path.join(dev, "nvidia[0-9]*")):
        kinds.append("NVIDIA GPU")
    chips = glob.glob(os.path.join(dev, "accel*")) + glob.glob(os.path.join(dev, "vfio", "[0-9]*"))
    if chips and any(
        _read(path) == GOOGLE_PCI_VENDOR
        for path in glob.glob(os.path.join(pci_devices, "*", "vendor"))
    ):
        kinds.append("TPU")
    return kinds


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def installed_plugins(kind: str) -> list[str]:
    """The JAX plugin packages for accelerators of `kind` that are installed."""
    found = []
    for package in PLUGINS[kind]:
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(package)
    return found


def runs_on_cpu_only(
    environ: Mapping[str, str] | None = None, present: list[str] | None = None
) -> bool:
    """Whether a process about to start JAX will compute on the CPU: JAX_PLATFORMS names the CPU
    first, or no accelerator of the machine has its JAX plugin installed. Decided without
    starting JAX (XLA reads its flags once, at start)."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    present = present_accelerators() if present is None else present
    return not any(installed_plugins(kind) for kind in present)


def startup_line(mesh_devices: int | None = None) -> str:
    """One line naming the backend, the device kind and count, and the process count, e.g.
    `devices: gpu, 8 x NVIDIA H200 (8 in the mesh), 1 process`."""
    import jax

    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    processes = jax.process_count()
    in_mesh = (
        f" ({mesh_devices} in the mesh)"
        if mesh_devices is not None and mesh_devices != len(devices)
        else ""
    )
    return (
        f"devices: {jax.default_backend()}, {len(devices)} x {' + '.join(kinds)}{in_mesh}, "
        f"{processes} process{'es' if processes > 1 else ''}"
    )


def idle_accelerator_warning(backend: str, present: list[str] | None = None) -> str | None:
    """A loud warning when the machine has a GPU or TPU but JAX computes on `backend` "cpu",
    saying how to fix it; None otherwise (or when JAX_PLATFORMS asks for the CPU)."""
    if backend != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip().lower().startswith("cpu"):
        return None
    present = present_accelerators() if present is None else present
    if not present:
        return None
    kind = present[0]
    plugins = installed_plugins(kind)
    if plugins:
        cause = (
            f"{', '.join(plugins)} is installed but did not start (see JAX's message above: "
            "a driver or library version mismatch?)"
        )
    else:
        cause = "this environment has the CPU-only jaxlib"
    return (
        f"WARNING: this machine has {'an' if kind.startswith('NVIDIA') else 'a'} {kind} but JAX "
        f"runs on the CPU: {cause}. "
        f"Fix: {FIX[kind]}; check with python -c 'import jax; print(jax.devices())'. "
        "Set JAX_PLATFORMS=cpu to train on the CPU on purpose."
    )
