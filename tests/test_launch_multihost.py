"""launch/multihost.py and launch/multihost_slurm.py: each launcher's exact commands and its
refusals (nothing trains).

Running real processes (stopping, dying with the launcher, one JAX cluster) is tested in
tests/test_launch_multihost_processes.py."""

import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from cnnjax.errors import UserError
from launch import multihost, multihost_slurm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PY = sys.executable
TRAIN = ["--config=configs/lenet5_fashion_mnist.py", "--workdir=runs/x", "--config.seed=1"]
EXAMPLE = "-- --config=configs/lenet5_fashion_mnist.py --workdir=runs/lenet5"


def _cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [PY, "-m", "launch.multihost", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the commands -------------------------------------------------------------------------------


def test_local_commands_give_each_process_the_coordinator_and_its_rank():
    argv = ["/venv/bin/python", "-m", "cnnjax.cli", "train", "--distributed", *TRAIN]
    commands = multihost.local_commands(TRAIN, 2, python="/venv/bin/python")
    assert commands == [
        (
            {
                "CNNJAX_COORDINATOR_ADDRESS": "127.0.0.1:12355",
                "CNNJAX_NUM_PROCESSES": "2",
                "CNNJAX_PROCESS_ID": "0",
            },
            argv,
        ),
        (
            {
                "CNNJAX_COORDINATOR_ADDRESS": "127.0.0.1:12355",
                "CNNJAX_NUM_PROCESSES": "2",
                "CNNJAX_PROCESS_ID": "1",
            },
            argv,
        ),
    ]
    assert multihost.command_line(*commands[1]) == (
        "CNNJAX_COORDINATOR_ADDRESS=127.0.0.1:12355 CNNJAX_NUM_PROCESSES=2 CNNJAX_PROCESS_ID=1 "
        "/venv/bin/python -m cnnjax.cli train --distributed "
        "--config=configs/lenet5_fashion_mnist.py --workdir=runs/x --config.seed=1"
    )


def test_local_commands_give_each_process_its_own_gpus():
    commands = multihost.local_commands(TRAIN, 2, port=23456, gpus_per_process=2)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in commands] == ["0,1", "2,3"]
    assert commands[1][0]["CNNJAX_COORDINATOR_ADDRESS"] == "127.0.0.1:23456"
    ids = ["4", "5", "6", "7"]
    commands = multihost.local_commands(TRAIN, 2, gpus_per_process=2, gpu_ids=ids)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in commands] == ["4,5", "6,7"]
    with pytest.raises(UserError) as error:
        multihost.local_commands(TRAIN, 2, gpus_per_process=2, gpu_ids=["4", "5", "6"])
    assert str(error.value) == (
        "2 processes x 2 GPUs need 4 GPUs but only 3 are visible (4,5,6): "
        "lower --num_processes or --gpus_per_process"
    )


@pytest.mark.parametrize(
    "given",
    [[], ["--distributed"], ["--distributed", "-distributed"], ["--distributed=true"]],
)
def test_distributed_is_passed_once_and_first(given):
    assert multihost.distributed_args([*TRAIN[:1], *given, *TRAIN[1:]]) == ["--distributed", *TRAIN]


def test_config_and_workdir_may_be_given_as_two_words():
    args = ["--config", "configs/x.py", "--workdir", "runs/x"]
    assert multihost.distributed_args(args) == ["--distributed", *args]
    assert multihost.flag_value(args, "workdir") == "runs/x"
    assert multihost.flag_value(["--config.workdir=no", "--workdir=yes"], "workdir") == "yes"


def test_slurm_script_runs_one_task_per_gpu_with_srun():
    script = multihost_slurm.slurm_script(
        [*TRAIN, "--distributed"],
        nodes=2,
        gpus_per_node=4,
        log_dir="/shared/runs/x/slurm",
        partition="gpu",
        setup="module load cuda",
        python="/shared/cnnjax/.venv/bin/python",
        chdir="/shared/cnnjax",
    )
    assert script == textwrap.dedent(
        """\
        #!/bin/bash
        #SBATCH --job-name=cnnjax
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=4
        #SBATCH --gpus-per-node=4
        #SBATCH --cpus-per-task=8
        #SBATCH --time=24:00:00
        #SBATCH --output=/shared/runs/x/slurm/%x_%j.out
        #SBATCH --open-mode=append
        #SBATCH --requeue
        #SBATCH --signal=TERM@120
        #SBATCH --partition=gpu
        #SBATCH --chdir=/shared/cnnjax
        set -euo pipefail
        module load cuda
        echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"
        # One process per GPU; JAX finds its coordinator, rank and GPU in SLURM's variables.
        status=0
        srun --kill-on-bad-exit=1 --cpus-per-task=8 /shared/cnnjax/.venv/bin/python -m cnnjax.cli \
train --distributed --config=configs/lenet5_fashion_mnist.py --workdir=runs/x --config.seed=1 \
|| status=$?
        if [ "$status" = 143 ]; then
          echo "job $SLURM_JOB_ID: the run saved its step and stopped; requeueing"
          scontrol requeue "$SLURM_JOB_ID" ||
            echo "job $SLURM_JOB_ID: requeue refused (cancelled?): submit again to resume"
        fi
        exit "$status"
        """
    )
    assert script.count("--distributed") == 1


def test_slurm_script_leaves_out_unset_options_and_quotes_arguments():
    script = multihost_slurm.slurm_script(
        ["--config=configs/x.py", "--workdir=/shared/my run"],
        nodes=1,
        gpus_per_node=1,
        log_dir="/logs",
        cpus_per_task=2,
        time="01:00:00",
        job_name="mine",
        python="/py",
    )
    lines = script.splitlines()
    assert "#SBATCH --job-name=mine" in lines and "#SBATCH --time=01:00:00" in lines
    assert not any("--partition" in line or "--chdir" in line for line in lines)
    assert lines[lines.index("status=0") + 1] == (
        "srun --kill-on-bad-exit=1 --cpus-per-task=2 /py -m cnnjax.cli train --distributed "
        "--config=configs/x.py '--workdir=/shared/my run' || status=$?"
    )
    assert lines[lines.index("set -euo pipefail") + 1].startswith("echo ")  # no setup line


def test_tpu_command_runs_on_every_worker_and_quotes_the_remote_command():
    train = ["--config=configs/x.py", "--workdir=/mnt/shared/my run"]
    remote = (
        "cd ~/cnnjax && .venv/bin/cnnjax train --distributed --config=configs/x.py "
        "'--workdir=/mnt/shared/my run'"
    )
    head = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32", "--zone=us-central2-b"]
    assert multihost.tpu_vm_commands(train, tpu_name="v4-32", zone="us-central2-b") == [
        [*head, "--worker=all", f"--command={remote}"]
    ]
    [command] = multihost.tpu_vm_commands(
        train, tpu_name="v4-32", zone="us-central2-b", project="lab", setup="source env.sh"
    )
    assert command[7:] == [
        "--project=lab",
        "--worker=all",
        "--command=cd ~/cnnjax && source env.sh && .venv/bin/cnnjax train --distributed "
        "--config=configs/x.py '--workdir=/mnt/shared/my run'",
    ]


def test_the_remote_command_gives_cnnjax_its_arguments_intact(tmp_path):
    checkout = tmp_path / "my checkout"  # a space in the checkout, too
    (checkout / ".venv" / "bin").mkdir(parents=True)
    fake = checkout / ".venv" / "bin" / "cnnjax"
    fake.write_text('#!/bin/sh\necho "$GREETING"\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    train = ["--config=configs/x.py", "--workdir=/mnt/shared/my run", "--config.name=it's"]
    [command] = multihost.tpu_vm_commands(
        train, tpu_name="t", zone="z", checkout=str(checkout), setup="export GREETING='hi there'"
    )
    remote = command[-1].removeprefix("--command=")
    result = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hi there", "train", "--distributed", *train]


# --- the command line ---------------------------------------------------------------------------


def test_cli_local_dry_run_prints_one_command_per_process():
    result = _cli("local", "--num_processes=2", "--port=23456", "--dry_run", "--", *TRAIN)
    assert result.returncode == 0, result.stderr
    env = "CNNJAX_COORDINATOR_ADDRESS=127.0.0.1:23456 CNNJAX_NUM_PROCESSES=2"
    train = f"{PY} -m cnnjax.cli train --distributed {' '.join(TRAIN)}"
    assert (
        result.stdout == f"{env} CNNJAX_PROCESS_ID=0 {train}\n{env} CNNJAX_PROCESS_ID=1 {train}\n"
    )
    assert result.stderr == ""


def test_cli_local_dry_run_splits_cuda_visible_devices():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="2,3,5,7")
    result = subprocess.run(
        [PY, "-m", "launch.multihost", "local", "--num_processes=2", "--gpus_per_process=2"]
        + ["--dry_run", "--", *TRAIN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [line[3] for line in lines] == ["CUDA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=5,7"]


def test_cli_slurm_dry_run_prints_the_script_and_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    train = ["--config=configs/x.py", f"--workdir={workdir}", "--distributed"]
    result = _cli("slurm", "--nodes=3", "--gpus_per_node=2", "--dry_run", "--", *train)
    assert result.returncode == 0, result.stderr
    assert result.stdout == multihost_slurm.slurm_script(
        train, nodes=3, gpus_per_node=2, log_dir=f"{workdir}/slurm", chdir=ROOT, python=PY
    )
    assert f"#SBATCH --output={workdir}/slurm/%x_%j.out\n" in result.stdout
    assert f"#SBATCH --chdir={ROOT}\n" in result.stdout
    assert result.stdout.count("--distributed") == 1
    assert not os.path.exists(workdir)
    seconds = _cli("slurm", "--gpus_per_node=2", "--signal_seconds=600", "--dry_run", "--", *train)
    assert seconds.stdout == multihost_slurm.slurm_script(
        train, nodes=1, gpus_per_node=2, log_dir=f"{workdir}/slurm", chdir=ROOT, signal_seconds=600
    )
    assert "#SBATCH --signal=TERM@600\n" in seconds.stdout


def test_cli_slurm_writes_the_script_and_submits_it(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records its argument instead of queueing a job
    fake.write_text(f'#!/bin/sh\necho "$1" > {tmp_path}/submitted\necho Submitted batch job 42\n')
    fake.chmod(0o755)
    workdir = str(tmp_path / "run")
    train = ["--config=configs/x.py", f"--workdir={workdir}"]
    result = _cli(
        "slurm", "--gpus_per_node=8", "--", *train, path=f"{bin_dir}:{os.environ['PATH']}"
    )
    assert result.returncode == 0, result.stderr
    script = f"{workdir}/slurm/train.sbatch"
    assert result.stdout == (
        f"Submitted batch job 42\n  script: {script}\n  log:    {workdir}/slurm/cnnjax_JOBID.out\n"
    )
    assert (tmp_path / "submitted").read_text() == f"{script}\n"
    assert open(script).read() == multihost_slurm.slurm_script(
        train, nodes=1, gpus_per_node=8, log_dir=f"{workdir}/slurm", chdir=ROOT, python=PY
    )


def test_submit_without_sbatch_says_how_to_submit_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as error:
        multihost_slurm.submit_slurm("/shared/x/train.sbatch")
    assert str(error.value) == (
        "sbatch is not on PATH: on a SLURM login node run `sbatch /shared/x/train.sbatch` from "
        "this checkout (--dry_run prints the script)"
    )


def test_cli_tpu_dry_run_prints_the_gcloud_command():
    train = ["--config=configs/x.py", "--workdir=/mnt/shared/my run"]
    result = _cli("tpu", "--tpu_name=v4-32", "--zone=us-central2-b", "--dry_run", "--", *train)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "gcloud compute tpus tpu-vm ssh v4-32 --zone=us-central2-b --worker=all "
        "'--command=cd ~/cnnjax && .venv/bin/cnnjax train --distributed --config=configs/x.py "
        "'\"'\"'--workdir=/mnt/shared/my run'\"'\"''\n"
    )
    assert result.stderr == ""
    relative = _cli("tpu", "--tpu_name=t", "--zone=z", "--dry_run", "--", *TRAIN)
    assert relative.returncode == 0
    assert relative.stderr == (
        "launch.multihost tpu: note: --workdir=runs/x is relative to the checkout; it must be one "
        "directory that all workers share (NFS, Filestore, gcsfuse)\n"
    )


def test_cli_tpu_runs_the_printed_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\nexit 5\n')
    fake.chmod(0o755)
    train = ["--config=configs/x.py", "--workdir=/mnt/shared/run"]
    options = ["--tpu_name=t", "--zone=z", "--project=p"]
    result = _cli("tpu", *options, "--", *train, path=f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 5  # gcloud's status
    [command] = multihost.tpu_vm_commands(train, tpu_name="t", zone="z", project="p")
    assert (tmp_path / "args").read_text().splitlines() == command[1:]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["local", "--num_processes=0", "--", *TRAIN],
            "launch.multihost local: error: --num_processes must be at least 1 (got 0)",
        ),
        (
            ["local", "--num_processes=2", "--", "--config=configs/x.py"],
            f"launch.multihost local: error: TRAIN_ARGS lack --workdir: end the command with "
            f"{EXAMPLE}",
        ),
        (
            ["slurm", "--gpus_per_node=4", "--", "--config.seed=1", "--workdir=runs/x"],
            f"launch.multihost slurm: error: TRAIN_ARGS lack --config: end the command with "
            f"{EXAMPLE}",
        ),
        (
            ["tpu", "--tpu_name=t", "--zone=z", "--", "--config.seed=1"],
            f"launch.multihost tpu: error: TRAIN_ARGS lack --config and --workdir: end the "
            f"command with {EXAMPLE}",
        ),
        (
            ["local", "--num_processes=2"],
            f"launch.multihost local: error: end the command with -- and the training "
            f"arguments, e.g. {EXAMPLE}",
        ),
        (
            ["local", "--num_processes=2", *TRAIN],
            f"launch.multihost local: error: unknown option {TRAIN[0]}: TRAIN_ARGS go after --, "
            f"e.g. {EXAMPLE}",
        ),
        (
            ["local", "--num_processes=2", "--", "train", *TRAIN],
            f"launch.multihost local: error: TRAIN_ARGS follow `cnnjax train`: drop the leading "
            f"`train` ({EXAMPLE})",
        ),
        (
            ["local", "--num_processes=2", "--", *TRAIN, "--nodistributed"],
            "launch.multihost local: error: --nodistributed contradicts a multi-host launch: "
            "drop it from TRAIN_ARGS",
        ),
        (
            ["local", "--num_processes=2", "--port=70000", "--", *TRAIN],
            "launch.multihost local: error: --port must be a TCP port, 1 to 65535 (got 70000)",
        ),
        (
            ["slurm", "--gpus_per_node=0", "--", *TRAIN],
            "launch.multihost slurm: error: --gpus_per_node must be at least 1 (got 0): the job "
            "runs one process per GPU",
        ),
        (
            ["slurm", "--gpus_per_node=1", "--signal_seconds=0", "--", *TRAIN],
            "launch.multihost slurm: error: --signal_seconds must be 1 to 65535 (got 0)",
        ),
        (
            ["slurm", "--gpus_per_node=1", "--log_dir=/my logs", "--", *TRAIN],
            "launch.multihost slurm: error: --log_dir must have no spaces for #SBATCH: pick "
            "another ('/my logs')",
        ),
        (
            ["local", "--", *TRAIN],
            "launch.multihost local: error: the following arguments are required: "
            "--num_processes (see --help)",
        ),
        (
            ["tpu", "--zone=z", "--", *TRAIN],
            "launch.multihost tpu: error: the following arguments are required: --tpu_name "
            "(see --help)",
        ),
        (
            ["gpu", "--", *TRAIN],
            "launch.multihost: error: argument {local,slurm,tpu}: invalid choice: 'gpu' "
            "(choose from 'local', 'slurm', 'tpu') (see --help)",
        ),
    ],
)
def test_cli_refuses_with_one_line(args, message):
    result = _cli(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")
