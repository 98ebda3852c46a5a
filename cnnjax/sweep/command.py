"""What `cnnjax sweep` and `cnnjax report` do, apart from flag parsing (cnnjax/cli.py)."""

from __future__ import annotations

import os

import ml_collections

from cnnjax import files
from cnnjax.errors import UserError
from cnnjax.sweep import devices as sweep_devices
from cnnjax.sweep import inline_executor, local_executor, slurm_executor
from cnnjax.sweep import report as sweep_report
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import make_plan, write_plan

LAUNCHERS = ("local", "slurm", "inline")


def _states(plan) -> dict[str, str]:
    return {run.run_id: run_status.run_state(run.workdir)[0] for run in plan.runs}


def sweep(
    config: ml_collections.ConfigDict,
    config_file: str,
    workdir: str,
    *,
    workers: int,
    launcher: str,
    dry_run: bool,
    slurm_options=None,
    share_devices: bool = False,
) -> int:
    """Plans the sweep, runs (or submits) what is not done, writes the report; returns the exit
    status (1 when a run failed). Local runs get their own GPUs or TPU chips (more `workers`
    than GPUs only with `share_devices`; UserError otherwise). `launcher="inline"` trains the
    runs one after another in this process (cnnjax/sweep/inline_executor.py: tests, debugging,
    tiny sweeps)."""
    refuse_object_store(workdir)
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown --launcher={launcher!r}: use {', '.join(LAUNCHERS)}")
    if launcher == "inline" and workers != 1:
        raise UserError(
            f"--launcher=inline runs one run at a time in this process: drop --workers={workers} "
            "or use --launcher=local"
        )
    plan = make_plan(config, workdir, sweep_file=config_file)
    states = _states(plan)
    todo = [r for r in plan.runs if states[r.run_id] not in (run_status.DONE, run_status.RUNNING)]
    busy = [r for r in plan.runs if states[r.run_id] == run_status.RUNNING]
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    print(
        f"sweep: {len(plan.arms)} arms x {len(plan.runs) // max(len(plan.arms), 1)} seeds = "
        f"{len(plan.runs)} runs in {plan.sweep_dir}/runs ({_counts(counts)})"
    )
    for run in busy:
        print(f"  running elsewhere, left alone: {run.run_id}")
    if launcher == "slurm":
        return _slurm(plan, todo, dry_run, slurm_options)
    inline = launcher == "inline"
    devices = ()
    if not inline:
        accelerators = sweep_devices.find_accelerators()
        devices = sweep_devices.device_slots(accelerators, workers, share=share_devices)
    if dry_run:
        print("dry run: nothing is started; would run, in this order:")
        if not todo:
            print("nothing: every run is done")
        elif inline:
            print(inline_executor.describe(todo))
        else:
            print(local_executor.describe(todo, workers, devices))
        return 0
    write_plan(plan)
    total = len(todo)

    def on_finish(run, code):
        state, status = run_status.run_state(run.workdir)
        done = sum(1 for s in _states(plan).values() if s == run_status.DONE)
        if state == run_status.FAILED:
            detail = status.get("error")
        elif state == run_status.INTERRUPTED:  # saved; the next `cnnjax sweep` resumes it
            detail = status.get("message")
        else:
            detail = _result_line(run.workdir)
        print(f"[{done}/{len(plan.runs)} done] {state}: {run.run_id}  {detail or ''}", flush=True)
        if not inline:  # its runs take about a second: the report's plots, half a second
            sweep_report.write_report(plan.sweep_dir)  # readable while the sweep goes on

    if total:
        at_once = "one after another in this process" if inline else f"{workers} at a time"
        print(f"running {total} runs, {at_once} (logs: <run>/{run_status.LOG_FILE})")
        if devices:
            print("\n".join(sweep_devices.describe_slots(devices, os.environ)))
        try:
            if inline:
                inline_executor.run_all(todo, on_finish=on_finish)
            else:
                local_executor.run_all(todo, workers, on_finish=on_finish, devices=devices)
        except KeyboardInterrupt:  # the runs were stopped; their checkpoints remain
            sweep_report.write_report(plan.sweep_dir)
            print("\ninterrupted: rerun the same command to resume (finished runs are kept)")
            return 130
    return _finish(plan)


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _result_line(workdir: str) -> str:
    results = sweep_report._read_json(os.path.join(workdir, "results.json"))
    accuracy = results.get("test_accuracy")
    return f"test_accuracy {accuracy:.4f}" if accuracy is not None else ""


def _finish(plan) -> int:
    written = sweep_report.write_report(plan.sweep_dir)
    print(f"\n{written['progress']}")
    _print_paths(written["paths"])
    states = _states(plan)
    failed = [r for r in plan.runs if states[r.run_id] == run_status.FAILED]
    for run in failed:
        error = run_status.read_status(run.workdir).get("error")
        print(f"  failed: {run.run_id}: {error}  (log: {run.workdir}/{run_status.LOG_FILE})")
    stopped = [r for r in plan.runs if states[r.run_id] == run_status.INTERRUPTED]
    for run in stopped:
        message = run_status.read_status(run.workdir).get("message") or "interrupted"
        print(f"  interrupted: {run.run_id}: {message}")
    if failed or stopped:
        print("rerun the same command to retry failed runs and resume interrupted ones")
    return 1 if failed else 0


def _print_paths(paths: dict) -> None:
    for name, path in paths.items():
        print(f"  {name + ':':<10} {path}")


def _slurm(plan, todo, dry_run: bool, options) -> int:
    if dry_run:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:  # show the files without writing them
            commands, script = slurm_executor.write(scratch, todo, options)
            print(
                f"dry run: would write {plan.sweep_dir}/slurm/sweep.sbatch "
                f"({len(todo)} array tasks) and submit it:\n"
            )
            text = open(script).read().replace(scratch, os.path.join(plan.sweep_dir))
            print(text)
            print(f"{plan.sweep_dir}/slurm/commands.txt:")
            print(open(commands).read(), end="")
        return 0
    write_plan(plan)
    commands, script = slurm_executor.write(plan.sweep_dir, todo, options)
    print(f"wrote {script} ({len(todo)} array tasks) and {commands}")
    print(slurm_executor.submit(script))
    print(f"report at any time: cnnjax report {plan.sweep_dir}")
    return 0


def refuse_object_store(sweep_dir: str) -> None:
    """One line for a sweep directory on an object store (gs://...): its workers' status files
    and the runs' workdirs are held with file locks."""
    files.refuse_object_store(
        sweep_dir,
        "a sweep's directory",
        "give a local or network-file-system --workdir (copy its runs and report to the bucket "
        "afterwards, e.g. gcloud storage cp -r)",
    )


def report(sweep_dir: str) -> int:
    sweep_dir = os.path.abspath(sweep_dir)
    if not os.path.isdir(sweep_dir):
        raise UserError(f"{sweep_dir} does not exist: give the --workdir of a `cnnjax sweep`")
    written = sweep_report.write_report(sweep_dir)
    print(written["progress"])
    _print_paths(written["paths"])
    return 0
