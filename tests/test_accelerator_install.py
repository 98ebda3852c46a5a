"""The accelerator builds of JAX: pyproject.toml's extras pin the version of constraints.txt, and
quickstart.sh picks the extra from the machine (a fake `nvidia-smi` on PATH stands for a GPU)."""

import os
import re
import subprocess

import pytest
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pinned(package: str) -> str:
    with open(os.path.join(ROOT, "constraints.txt")) as file:
        for line in file:
            name, _, version = line.strip().partition("==")
            if name.lower() == package:
                return version
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_each_accelerator_extra_pins_jax_at_the_constraints_version():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    jax_version = _pinned("jax")
    assert jax_version == _pinned("jaxlib")
    for extra in ("cuda12", "cuda13", "tpu"):
        assert extras[extra] == [f"jax[{extra}]=={jax_version}"]


def _dry_run(tmp_path, *, driver: str | None = None, **environment) -> subprocess.CompletedProcess:
    """quickstart.sh's set-up in dry-run mode, with a fake nvidia-smi printing `driver`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if driver is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f'#!/bin/sh\n[ "$1" = --query-gpu=driver_version ] && echo "{driver}"\n')
        fake.chmod(0o755)
    env = dict(os.environ, CNNJAX_SETUP_DRY_RUN="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("CNNJAX_ACCELERATOR", None)
    env.update(environment)
    return subprocess.run(
        [os.path.join(ROOT, "quickstart.sh"), "test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _install_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return re.search(r"would run: .*pip install -e (\S+)", result.stdout).group(1)


@pytest.mark.parametrize(
    ("driver", "extras"),
    [("580.65.06", '".[dev,cuda13]"'), ("550.90.07", '".[dev,cuda12]"'), (None, '".[dev]"')],
)
def test_quickstart_installs_the_jax_build_of_the_gpu_it_finds(tmp_path, driver, extras):
    if driver is None and any(
        os.path.exists(os.path.join(directory, "nvidia-smi"))
        for directory in os.environ["PATH"].split(os.pathsep)
    ):
        pytest.skip("this machine has a real nvidia-smi")
    result = _dry_run(tmp_path, driver=driver)
    assert _install_line(result) == extras
    if driver:
        assert f"driver {driver}" in result.stdout


def test_the_environment_overrides_the_detection(tmp_path):
    assert _install_line(_dry_run(tmp_path, driver="580.1", CNNJAX_ACCELERATOR="cpu")) == '".[dev]"'
    assert _install_line(_dry_run(tmp_path, CNNJAX_ACCELERATOR="tpu")) == '".[dev,tpu]"'
    wrong = _dry_run(tmp_path, CNNJAX_ACCELERATOR="rocm")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "CNNJAX_ACCELERATOR=rocm: use auto, cpu, cuda12, cuda13 or tpu"
