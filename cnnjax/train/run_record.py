"""The reproducibility record of a run: library versions, device, git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_revision() -> str | None:
    """The commit of the cnnjax checkout in use (with '+dirty' for local changes), if any."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        revision = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (revision + ("+dirty" if dirty else "")) or None


def cpu_threads() -> int:
    """The CPUs this process may run on, which size XLA:CPU's thread pools. Float reductions
    split across threads add in a different order, so on CPU a run's numbers depend on it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def environment() -> dict:
    """Device, host and software facts to store beside every result."""
    device = jax.devices()[0]
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu_threads": cpu_threads(),
        "python": platform.python_version(),
        "host": platform.node(),
        "versions": library_versions(),
        "git_revision": git_revision(),
    }
