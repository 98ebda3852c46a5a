"""A workdir on Google Cloud Storage (gs://), against a local GCS emulator that the tests start
and stop (gcp-storage-emulator in memory on 127.0.0.1, tests/gcs_emulator.py): `cnnjax train`
killed with kill -9 and rerun ends with the parameters and curves of a local run that never
stopped, and every file of the run is read back from the emulator.

gcsfs (etils.epath's gs:// backend without TensorFlow) and tensorstore (Orbax's arrays) are
pointed at the emulator through their own settings, STORAGE_EMULATOR_HOST and
TENSORSTORE_GCS_HTTP_URL, with no credentials (the metadata server set to a closed port, so that
looking for one fails at once)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
from conftest import (
    INVOCATION_KEYS,
    RECIPE,
    ROOT,
    TEST_DATA_DIR,
    final_checkpoint_state,
    resume_command,
    resume_config,
    run_cnnjax,
)
from etils import epath

from cnnjax.errors import UserError
from cnnjax.train import workdir as workdirs

BUCKET = "bucket"
# And the config changes accepted at each resume: this run resumed, the reference did not.
VOLATILE = INVOCATION_KEYS | {"config_changes"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """The emulator's environment for this process and its subprocesses, for the module."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), str(port), BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (and google-cloud-storage)
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver, under Orbax
        "GCE_METADATA_ROOT": "127.0.0.1:1",  # no credentials to find: anonymous at once
        # gcsfs asks a gRPC control API (which the emulator lacks) for each bucket's layout.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # After the environment: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when imported.
    pytest.importorskip("gcsfs", reason="pip install -e '.[dev]' (gcsfs and the GCS emulator)")
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or emulator.poll() is not None:
                    raise
                time.sleep(0.05)
        yield env
    finally:
        emulator.terminate()
        emulator.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_gcs_clients()


def _forget_gcs_clients() -> None:
    """Drops the cached gcsfs client, which points at this module's emulator."""
    import gcsfs
    from etils.epath import backend

    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


def _read(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def _curves(text: str) -> list[dict]:
    rows = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]


def _kill_after_first_checkpoint(workdir: str, env: dict, seed: int) -> None:
    """Starts `cnnjax train` in `workdir` and kill -9s it at a random moment after its first
    checkpoint is committed: often in the middle of uploading a later one."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnjax.cli", *resume_command(workdir)],
        cwd=ROOT,
        env=dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if workdirs.finished_checkpoint_steps(workdir):
            break
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"seed {seed}: {stderr[-2000:]}"


def test_a_gcs_run_killed_and_rerun_equals_a_local_run_and_reads_back(gcs, reference_run):
    from cnnjax import load_trained_run, train_and_evaluate
    from cnnjax.inspect.evaluation_report import evaluate_workdir
    from cnnjax.inspect.visualize import visualize_workdir
    from cnnjax.train.finetune import read_pretrained

    workdir = f"gs://{BUCKET}/runs/lenet5/"  # a trailing slash as users type it
    run = workdir.rstrip("/")
    seed = time.time_ns()
    _kill_after_first_checkpoint(workdir, gcs, seed)
    assert not epath.Path(run, "results.json").exists()  # it really died before the end
    assert epath.Path(run, ".train.lock").exists()  # left by the killed holder: must not block
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no local ./gs:/bucket/... tree

    results = train_and_evaluate(resume_config(), workdir).results
    assert results["resumed_from_step"] > 0, f"seed {seed}"
    assert not epath.Path(run, ".train.lock").exists()

    # Every file, read back from the emulator, as the local run that never stopped wrote it.
    expected = json.loads((reference_run / "results.json").read_text())
    saved = json.loads(_read(f"{run}/results.json"))
    assert {k: v for k, v in saved.items() if k not in VOLATILE} == {
        k: v for k, v in expected.items() if k not in VOLATILE
    }
    assert json.loads(_read(f"{run}/config.json"))["model"]["name"] == "lenet5"
    metrics = _read(f"{run}/metrics.jsonl").decode()
    assert _curves(metrics) == _curves((reference_run / "metrics.jsonl").read_text())
    assert _read(f"{run}/curves.png")[:8] == b"\x89PNG\r\n\x1a\n"
    events = list(epath.Path(run, "tensorboard").glob("events.out.tfevents.*"))
    # The resume's (a killed run's events since TensorBoard's last flush are lost, as on a disk).
    assert events and all(b"test/accuracy" in e.read_bytes() for e in events)

    step_a, state_a = final_checkpoint_state(str(reference_run / "checkpoints"))
    step_b, state_b = final_checkpoint_state(f"{run}/checkpoints")
    assert step_a == step_b == expected["steps"]
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise

    # Read back as `cnnjax eval` and `--config.init_from` do.
    trained = load_trained_run(workdir, "latest")
    assert trained.step == expected["steps"]
    evaluation = evaluate_workdir(workdir, "latest")
    assert evaluation["top_1_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
    assert "top_1_accuracy" in json.loads(_read(evaluation["paths"]["metrics.json"]))
    assert list(epath.Path(evaluation["paths"]["tensorboard"]).glob("events.out.tfevents.*"))
    figures = visualize_workdir(workdir, "latest", num_images=2)
    assert figures["saliency"].startswith(f"{run}/visualize/step_{expected['steps']}/")
    assert _read(figures["saliency"])[:8] == b"\x89PNG\r\n\x1a\n"
    pretrained, step = read_pretrained(workdir, "latest")
    assert step == expected["steps"]
    np.testing.assert_array_equal(
        jax.tree.leaves(pretrained["params"])[0], jax.tree.leaves(state_a["params"])[0]
    )


def test_a_live_lease_is_refused_in_one_line_and_a_lapsed_one_taken_over(gcs):
    workdir = f"gs://{BUCKET}/runs/leased"
    lock = epath.Path(workdir, ".train.lock")
    live = {"pid": os.getppid(), "host": socket.gethostname(), "since": "then"}
    lock.write_text(json.dumps({**live, "renewed": time.time()}))
    with pytest.raises(UserError) as refused, workdirs.hold(workdir):
        pass
    assert str(refused.value) == (
        f"{workdir} is in use by another `cnnjax train` (pid {os.getppid()} on "
        f"{socket.gethostname()}, since then): wait for it to finish or stop it, or give another "
        "--workdir"
    )
    # Another host's lock, not renewed for longer than the lease: its holder is gone.
    lock.write_text(json.dumps({**live, "host": "elsewhere", "renewed": time.time() - 600}))
    with workdirs.hold(workdir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_sweep_on_gcs_is_refused_in_one_line(gcs):
    result = run_cnnjax(
        "sweep",
        f"--config={os.path.join(ROOT, 'experiments', 'relu_vs_tanh', 'config.py')}",
        f"--workdir=gs://{BUCKET}/sweeps/x",
    )
    assert result.returncode == 2
    assert result.stderr == (
        "cnnjax sweep: error: a sweep's directory needs file locks, which gs:// object storage "
        "does not have: give a local or network-file-system --workdir (copy its runs and report "
        "to the bucket afterwards, e.g. gcloud storage cp -r)\n"
    )
    assert not list(epath.Path(f"gs://{BUCKET}").glob("sweeps"))


def test_a_dataset_folder_on_gcs_is_refused_in_one_line(tmp_path):
    from cnnjax import load_config, train_and_evaluate

    config = load_config(f"{RECIPE}:smoke", {"data.data_dir": "gs://bucket/tfds"})
    with pytest.raises(UserError) as refused:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert str(refused.value) == (
        "config.data.data_dir=gs://bucket/tfds: preparing a dataset needs file locks, which gs:// "
        "object storage does not have: copy the prepared dataset to a local disk (e.g. gcloud "
        "storage cp -r) and give that folder (cnnjax reads datasets from local disks only; "
        "workdirs may be on gs://)"
    )
    assert not (tmp_path / "run").exists()
