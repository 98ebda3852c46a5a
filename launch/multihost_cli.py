"""The command line of launch/multihost.py: `python -m launch.multihost {local,slurm,tpu}
[options] [--dry_run] -- TRAIN_ARGS...` (see launch/README.md)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from cnnjax.errors import UserError
from launch.multihost import (
    DEFAULT_PORT,
    EXAMPLE,
    command_line,
    distributed_args,
    flag_value,
    local_commands,
    run_local,
    tpu_vm_commands,
)
from launch.multihost_slurm import slurm_script, submit_slurm


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (as in `cnnjax`), not a usage dump."""

    def error(self, message: str):
        name = self.prog.removeprefix("python -m ")
        print(f"{name}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    prog = "python -m launch.multihost"
    parser = _Parser(
        prog=prog,
        description=__doc__.split("\n\nEach launcher")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launchers = parser.add_subparsers(dest="launcher", required=True, metavar="{local,slurm,tpu}")

    def launcher(name: str, summary: str) -> argparse.ArgumentParser:
        sub = launchers.add_parser(
            name,
            prog=f"{prog} {name}",
            usage="%(prog)s [options] [--dry_run] -- --config=FILE --workdir=DIR [overrides]",
            help=summary,
            description=summary,
        )
        sub.add_argument("--dry_run", action="store_true", help="print the commands; start nothing")
        return sub

    local = launcher("local", "N processes on this machine")
    local.add_argument("--num_processes", type=int, required=True)
    local.add_argument(
        "--gpus_per_process",
        type=int,
        default=0,
        help="GPUs per process, taken in order from CUDA_VISIBLE_DEVICES (or 0, 1, ...)",
    )
    local.add_argument("--port", type=int, default=DEFAULT_PORT, help="the coordinator's port")
    local.add_argument("--log_dir", default="", help="default WORKDIR/process_logs")
    slurm = launcher("slurm", "an sbatch job: one task per GPU on --nodes nodes")
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus_per_node", type=int, required=True)
    slurm.add_argument("--cpus_per_task", type=int, default=8)
    slurm.add_argument("--time", default="24:00:00")
    slurm.add_argument("--partition", default="")
    slurm.add_argument("--job_name", default="cnnjax")
    slurm.add_argument("--setup", default="", help='shell line run first, e.g. "module load cuda"')
    slurm.add_argument("--log_dir", default="", help="script and log; default WORKDIR/slurm")
    slurm.add_argument(
        "--signal_seconds",
        type=int,
        default=120,
        help="SIGTERM this long before the time limit: the run saves a step and is requeued",
    )
    tpu = launcher("tpu", "every worker of a Cloud TPU VM, through gcloud")
    tpu.add_argument("--tpu_name", required=True)
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", default="", help="default: gcloud's configured project")
    tpu.add_argument("--checkout", default="~/cnnjax", help="the repository on every worker")
    tpu.add_argument("--setup", default="", help="shell line run first on every worker")
    return parser


def _local(args: argparse.Namespace, train_args: list[str]) -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = [g for g in visible.split(",") if g] if visible is not None else None
    options = dict(port=args.port, gpus_per_process=args.gpus_per_process, gpu_ids=gpu_ids)
    if args.dry_run:
        for env, argv in local_commands(train_args, args.num_processes, **options):
            print(command_line(env, argv))
        return 0
    return run_local(train_args, args.num_processes, log_dir=args.log_dir, **options)


def _slurm(args: argparse.Namespace, train_args: list[str]) -> int:
    workdir = flag_value(train_args, "workdir")
    log_dir = os.path.abspath(args.log_dir or os.path.join(workdir, "slurm"))
    script = slurm_script(
        train_args,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        log_dir=log_dir,
        cpus_per_task=args.cpus_per_task,
        time=args.time,
        partition=args.partition,
        job_name=args.job_name,
        setup=args.setup,
        chdir=os.getcwd(),
        signal_seconds=args.signal_seconds,
    )
    if args.dry_run:
        print(script, end="")
        return 0
    os.makedirs(log_dir, exist_ok=True)  # SLURM does not create the log's folder
    path = os.path.join(log_dir, "train.sbatch")
    with open(path, "w") as f:
        f.write(script)
    print(f"{submit_slurm(path)}\n  script: {path}\n  log:    {log_dir}/{args.job_name}_JOBID.out")
    return 0


def _tpu(args: argparse.Namespace, train_args: list[str]) -> int:
    commands = tpu_vm_commands(
        train_args,
        tpu_name=args.tpu_name,
        zone=args.zone,
        project=args.project,
        checkout=args.checkout,
        setup=args.setup,
    )
    workdir = flag_value(train_args, "workdir")
    if not os.path.isabs(workdir) and "://" not in workdir:
        print(
            f"launch.multihost tpu: note: --workdir={workdir} is relative to the checkout; it "
            "must be one directory that all workers share (NFS, Filestore, gcsfuse)",
            file=sys.stderr,
        )
    if args.dry_run:
        print("\n".join(shlex.join(command) for command in commands))
        return 0
    if shutil.which("gcloud") is None:
        raise UserError(
            "gcloud is not on PATH: install the Google Cloud CLI, or run the command "
            "that --dry_run prints on a machine that has it"
        )
    for command in commands:
        code = subprocess.run(command).returncode
        if code:
            return code
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m launch.multihost {local,slurm,tpu} [options] [--dry_run] -- TRAIN_ARGS`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = _parser()
    args, unknown = parser.parse_known_args(argv[:split])
    prefix = f"launch.multihost {args.launcher}: error:"
    try:
        if unknown:
            raise UserError(f"unknown option {unknown[0]}: TRAIN_ARGS go after --, e.g. {EXAMPLE}")
        if split == len(argv):
            raise UserError(f"end the command with -- and the training arguments, e.g. {EXAMPLE}")
        train_args = argv[split + 1 :]
        distributed_args(train_args)  # refuse bad TRAIN_ARGS before anything else
        return {"local": _local, "slurm": _slurm, "tpu": _tpu}[args.launcher](args, train_args)
    except UserError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
