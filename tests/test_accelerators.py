"""Which accelerators a run finds and uses: the device files behind the start-up line's
warning, the choice of the XLA:CPU flag, and the CPU-only fast paths chosen by backend."""

import jax
import pytest

from cnnjax.config_base import get_base_config
from cnnjax.parallel import accelerators
from cnnjax.train import run


def _machine(tmp_path, *, dev=(), vendors=()):
    """Fake /dev and /sys/bus/pci/devices folders holding `dev` files and PCI `vendors`."""
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    for name in dev:
        (tmp_path / "dev" / name).write_text("")
    for index, vendor in enumerate(vendors):
        device = tmp_path / "pci" / f"0000:00:0{index}.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(f"{vendor}\n")
    return {"dev": str(tmp_path / "dev"), "pci_devices": str(tmp_path / "pci")}


@pytest.mark.parametrize(
    ("dev", "vendors", "found"),
    [
        (("nvidia0", "nvidia1", "nvidiactl"), ("0x10de",), ["NVIDIA GPU"]),
        (("accel0", "accel1"), ("0x1ae0",), ["TPU"]),
        (("vfio/0",), ("0x1ae0", "0x8086"), ["TPU"]),  # v5e and later
        (("vfio/0",), ("0x8086",), []),  # VFIO for other hardware is no TPU
        (("nvidiactl",), (), []),  # the driver's control file alone is no GPU
    ],
)
def test_the_device_files_tell_which_accelerators_the_machine_has(tmp_path, dev, vendors, found):
    assert (
        accelerators.present_accelerators(**_machine(tmp_path, dev=dev, vendors=vendors)) == found
    )


def test_an_idle_gpu_gets_one_warning_saying_how_to_fix_it(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(accelerators, "installed_plugins", lambda kind: [])
    assert accelerators.idle_accelerator_warning("cpu", ["NVIDIA GPU"]) == (
        "WARNING: this machine has an NVIDIA GPU but JAX runs on the CPU: this environment has "
        'the CPU-only jaxlib. Fix: pip install -e ".[cuda13]" (".[cuda12]" for drivers older '
        "than 580), or rerun ./quickstart.sh, which picks the build from nvidia-smi; check with "
        "python -c 'import jax; print(jax.devices())'. Set JAX_PLATFORMS=cpu to train on the "
        "CPU on purpose."
    )
    monkeypatch.setattr(accelerators, "installed_plugins", lambda kind: ["jax-cuda13-plugin"])
    broken = accelerators.idle_accelerator_warning("cpu", ["NVIDIA GPU"])
    assert "jax-cuda13-plugin is installed but did not start" in broken
    assert "a TPU but JAX runs on the CPU" in accelerators.idle_accelerator_warning("cpu", ["TPU"])
    # Nothing to say: the accelerator is used, there is none, or the CPU was asked for.
    assert accelerators.idle_accelerator_warning("gpu", ["NVIDIA GPU"]) is None
    assert accelerators.idle_accelerator_warning("cpu", []) is None
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert accelerators.idle_accelerator_warning("cpu", ["NVIDIA GPU"]) is None


def test_the_start_up_line_names_backend_devices_and_processes():
    assert accelerators.startup_line() == "devices: cpu, 1 x cpu, 1 process"
    assert accelerators.startup_line(1) == "devices: cpu, 1 x cpu, 1 process"


def test_the_xla_cpu_flag_is_for_processes_that_will_compute_on_the_cpu(monkeypatch):
    monkeypatch.setattr(accelerators, "installed_plugins", lambda kind: [])
    assert accelerators.runs_on_cpu_only({}, present=[])
    assert accelerators.runs_on_cpu_only({}, present=["NVIDIA GPU"])  # no plugin: the CPU
    assert not accelerators.runs_on_cpu_only({"JAX_PLATFORMS": "cuda,cpu"}, present=[])
    assert accelerators.runs_on_cpu_only({"JAX_PLATFORMS": "cpu"}, present=["TPU"])
    monkeypatch.setattr(accelerators, "installed_plugins", lambda kind: ["libtpu"])
    assert not accelerators.runs_on_cpu_only({}, present=["TPU"])


def test_the_cpu_only_fast_paths_are_left_out_on_other_backends(monkeypatch):
    config = get_base_config()
    assert config.model.fast_paths is None  # chosen by backend
    assert run.resolve_backend_choices(config).model.fast_paths is True  # this CPU
    assert config.model.fast_paths is None  # the caller's config is left as it was
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    resolved = run.resolve_backend_choices(config)
    assert resolved.model.fast_paths is False
    options = run.build_model(resolved, 10).layer_options
    assert (options.block_convolutions, options.reshape_pooling) == (False, False)
    config.model.fast_paths = True  # asked for: taken on any backend
    assert run.build_model(config, 10).layer_options.block_convolutions
