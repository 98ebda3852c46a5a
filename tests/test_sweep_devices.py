"""`cnnjax sweep --workers=N` on a machine with accelerators: each worker gets its own GPUs or TPU
chips, sharing only with --share_devices, and a machine without any is left as it was.

The machine is faked: an `nvidia-smi` script first on PATH lists 4 GPUs, empty files stand in
for a TPU VM's /dev/accel*. Nothing here starts JAX or a `cnnjax` process.
"""

import os
import stat

import pytest

from cnnjax.errors import UserError
from cnnjax.sweep import command as sweep_command
from cnnjax.sweep import devices
from cnnjax.sweep.devices import GPU, TPU, Accelerators, device_slots, find_accelerators
from cnnjax.sweep.local_executor import describe, worker_env
from cnnjax.sweep.plan import RunSpec
from tests.conftest import RECIPE

# Answers the one query the launcher makes, and fails on any other, as a driver-less one would.
FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$*" = "--query-gpu=index --format=csv,noheader" ]; then
    printf '0\\n1\\n2\\n3\\n'
else
    echo "unexpected arguments: $*" >&2
    exit 9
fi
"""
NO_TPU = ()  # no device file patterns: the TPU probe finds nothing
MEMORY = "XLA_PYTHON_CLIENT_MEM_FRACTION"


@pytest.fixture
def four_gpus(tmp_path, monkeypatch):
    """A machine whose `nvidia-smi` lists GPUs 0-3, with nothing chosen by the user."""
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "nvidia-smi"
    program.write_text(FAKE_NVIDIA_SMI)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("CUDA_VISIBLE_DEVICES", MEMORY, "TPU_VISIBLE_CHIPS"):
        monkeypatch.delenv(name, raising=False)


def _gpus() -> Accelerators:
    return find_accelerators(tpu_device_patterns=NO_TPU)


def _ids(slots) -> list[str]:
    return [",".join(slot.ids) for slot in slots]


def test_nvidia_smi_on_path_lists_the_gpus(four_gpus):
    assert _gpus() == Accelerators(GPU, ("0", "1", "2", "3"))


@pytest.mark.parametrize(
    "workers, expected",
    [(1, ["0,1,2,3"]), (2, ["0,1", "2,3"]), (3, ["0", "1", "2"]), (4, ["0", "1", "2", "3"])],
)
def test_workers_get_disjoint_gpus(four_gpus, workers, expected):
    slots = device_slots(_gpus(), workers)
    assert _ids(slots) == expected
    assert [slot.sharers for slot in slots] == [1] * workers


def test_more_workers_than_gpus_is_one_line_naming_both_fixes(four_gpus):
    with pytest.raises(UserError) as error:
        device_slots(_gpus(), 5)
    assert str(error.value) == (
        "--workers=5 but this machine has 4 GPUs: use --workers<=4, "
        "or --share_devices to let runs share them"
    )


def test_shared_gpus_go_round_robin_with_an_equal_part_of_the_memory(four_gpus):
    slots = device_slots(_gpus(), 6, share=True)
    assert _ids(slots) == ["0", "1", "2", "3", "0", "1"]
    assert [slot.sharers for slot in slots] == [2, 2, 1, 1, 2, 2]
    env = [worker_env((0,), slot, os.environ) for slot in slots]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == _ids(slots)
    # JAX's own 75% of a GPU split between its 2 workers; a GPU to itself keeps the default.
    assert [e.get(MEMORY) for e in env] == ["0.375", "0.375", None, None, "0.375", "0.375"]
    assert device_slots(_gpus(), 4, share=True) == device_slots(_gpus(), 4)  # enough: own GPUs


def test_a_memory_fraction_the_user_set_is_kept(four_gpus, monkeypatch):
    monkeypatch.setenv(MEMORY, "0.2")
    slot = device_slots(_gpus(), 8, share=True)[0]
    assert worker_env((0,), slot)[MEMORY] == "0.2"


def test_cuda_visible_devices_already_set_limits_the_gpus(four_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert _gpus() == Accelerators(GPU, ("1", "3"))
    assert _ids(device_slots(_gpus(), 2)) == ["1", "3"]  # physical ids, as the runs need them
    with pytest.raises(UserError, match="^--workers=3 but this machine has 2 GPUs: "):
        device_slots(_gpus(), 3)


@pytest.mark.parametrize(
    "visible, expected",
    [
        ("", None),  # CUDA's reading: no GPU at all
        ("-1", None),
        ("2,7,0", ("2",)),  # stops at the first entry that names no GPU
        ("GPU-5b1c,MIG-0a2f", ("GPU-5b1c", "MIG-0a2f")),  # UUIDs pass through
    ],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(four_gpus, monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert _gpus() == (Accelerators(GPU, expected) if expected else None)


def test_a_started_worker_sees_only_its_gpus(four_gpus):
    launcher = {"PATH": "/usr/bin", "HOME": "/home/me"}
    first, second = device_slots(_gpus(), 2)
    assert worker_env((2, 3), second, launcher) == {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "2,3",  # its own GPUs: JAX's preallocation is left as it is
    }
    assert worker_env((0, 1), first, launcher)["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_without_accelerators_the_environment_is_as_before(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a variable alone is no GPU
    assert find_accelerators(tpu_device_patterns=[str(tmp_path / "accel[0-9]*")]) is None
    assert device_slots(None, 5) == []  # any number of workers, as today
    launcher = {"PATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "0"}
    assert worker_env((0,), None, launcher) == {
        "PATH": str(tmp_path),
        "TF_CPP_MIN_LOG_LEVEL": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def test_an_nvidia_smi_that_fails_means_no_gpus(tmp_path, monkeypatch):
    program = tmp_path / "nvidia-smi"
    program.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
        "NVIDIA driver.'\nexit 9\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_accelerators(tpu_device_patterns=NO_TPU) is None


def _tpu_vm(tmp_path, chips: int, runtime: str = "json") -> Accelerators | None:
    """A TPU VM with `chips` /dev/accel<i> files; `runtime` stands in for libtpu."""
    for chip in range(chips):
        (tmp_path / f"accel{chip}").touch()
    return find_accelerators(
        {"PATH": str(tmp_path)},
        tpu_device_patterns=[str(tmp_path / "accel[0-9]*")],
        tpu_runtime=runtime,
    )


def test_tpu_chips_are_split_into_single_process_slices(tmp_path):
    chips = _tpu_vm(tmp_path, 4)
    assert chips == Accelerators(TPU, ("0", "1", "2", "3"))
    assert worker_env((0,), device_slots(chips, 1)[0], {}) == worker_env((0,), None, {})
    first, second = device_slots(chips, 2)
    assert devices.slot_environment(second, {}) == {
        "TPU_VISIBLE_CHIPS": "2,3",
        "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,2,1",
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": "8477",
        "TPU_PROCESS_ADDRESSES": "localhost:8477",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }
    assert devices.slot_environment(first, {})["TPU_PROCESS_PORT"] == "8476"
    singles = device_slots(chips, 4)
    assert [devices.slot_environment(s, {})["TPU_VISIBLE_CHIPS"] for s in singles] == list("0123")


def test_tpu_chips_are_never_shared(tmp_path):
    with pytest.raises(UserError) as error:
        device_slots(_tpu_vm(tmp_path, 4), 5, share=True)
    assert str(error.value) == (
        "--workers=5 but this machine has 4 TPU chips, and runs cannot share a TPU chip: "
        "use --workers<=4"
    )


def test_tpu_device_files_without_libtpu_are_no_tpu(tmp_path):
    assert _tpu_vm(tmp_path, 4, runtime="cnnjax_no_such_runtime") is None


def _runs(count: int) -> list[RunSpec]:
    return [
        RunSpec(f"run{i}", "arm", {}, ("arm",), i, f"/sweep/runs/run{i}", ("train", f"--s={i}"))
        for i in range(count)
    ]


def test_dry_run_says_which_gpus_each_worker_gives_its_runs(four_gpus):
    text = describe(_runs(3), 2, device_slots(_gpus(), 2))
    assert "  worker 0: GPUs 0,1  (CUDA_VISIBLE_DEVICES=0,1)\n" in text
    assert "  worker 1: GPUs 2,3  (CUDA_VISIBLE_DEVICES=2,3)\n" in text
    shared = describe(_runs(3), 5, device_slots(_gpus(), 5, share=True))
    assert (
        "  worker 4: GPU 0, shared by 2 workers  "
        "(CUDA_VISIBLE_DEVICES=0 XLA_PYTHON_CLIENT_MEM_FRACTION=0.375)"
    ) in shared
    assert "devices" not in describe(_runs(3), 2)  # no accelerators: the plan of before


def test_sweep_refuses_too_many_workers_before_writing_anything(four_gpus, tmp_path, capsys):
    config = _tiny_sweep()
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(UserError, match="^--workers=5 but this machine has 4 GPUs"):
        sweep_command.sweep(
            config, "sweep.py", str(sweep_dir), workers=5, launcher="local", dry_run=False
        )
    assert not (sweep_dir / "sweep.json").exists()
    status = sweep_command.sweep(
        config, "sweep.py", str(sweep_dir), workers=2, launcher="local", dry_run=True
    )
    assert status == 0
    assert "  worker 1: GPUs 2,3  (CUDA_VISIBLE_DEVICES=2,3)" in capsys.readouterr().out


def _tiny_sweep():
    import ml_collections

    sweep = ml_collections.ConfigDict()
    sweep.base = RECIPE + ":smoke"
    sweep.overrides = {"train": {"epochs": 1}}
    sweep.axes = [{"model.activation": ("relu", "tanh")}]
    sweep.seeds = (0,)
    return sweep
