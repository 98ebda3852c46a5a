"""RunCheckpoints on its own: "best" by the recorded test accuracy across reopenings, exactly the
k best plus the latest kept, damaged checkpoints refused, failed writes as one line."""

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tmpfs

from cnnjax.errors import UserError
from cnnjax.metrics.writers import MetricWriter, read_metrics
from cnnjax.train.checkpoints import RunCheckpoints
from cnnjax.train.workdir import write_json

SHAPE = (128, 64)  # large enough for tensorstore to keep it in a data file of its own


def _state(value: float) -> dict:
    return {"params": {"kernel": jnp.full(SHAPE, value, jnp.float32)}, "step": jnp.int32(1)}


def _abstract():
    return jax.eval_shape(lambda: _state(0.0))


def _save_all(checkpoints, saves):
    for step, accuracy in saves:
        metrics = None if accuracy is None else {"test_accuracy": accuracy}
        checkpoints.save(step, _state(step), {"signature": {}}, metrics=metrics)
        checkpoints.wait()


def test_best_survives_a_restart_and_exactly_the_k_best_plus_the_latest_are_kept(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path), keep_best=2)
    # Evaluations at 10, 20, 30; unranked saves (periodic, or on a signal) in between.
    _save_all(checkpoints, [(10, 0.5), (15, None), (20, 0.8), (25, None), (30, 0.6)])
    assert checkpoints.all_steps() == [20, 30]  # 30 is both the latest and second best
    checkpoints.close()

    reopened = RunCheckpoints(str(tmp_path), keep_best=2)  # as a resumed process does
    assert reopened.best_step() == 20 and reopened.metrics(20) == {"test_accuracy": 0.8}
    _save_all(reopened, [(35, None), (40, 0.1), (45, None), (50, 0.8)])
    # The tie at 0.8 goes to the later step; 30 (0.6) drops out of the best two.
    assert reopened.best_step() == 50
    assert reopened.all_steps() == [20, 50]
    _save_all(reopened, [(55, None)])
    assert reopened.all_steps() == [20, 50, 55]
    reopened.close()


def test_no_ranked_checkpoint_means_no_best(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path), keep_best=2)
    _save_all(checkpoints, [(7, None), (14, None)])
    assert checkpoints.best_step() is None and checkpoints.all_steps() == [14]
    with pytest.raises(ValueError, match="non-finite"):
        checkpoints.save(21, _state(1.0), {}, metrics={"test_accuracy": float("nan")})
    checkpoints.close()


def _restore(tmp_path, step=10):
    checkpoints = RunCheckpoints(str(tmp_path), keep_best=1)
    try:
        return checkpoints.restore(step, _abstract(), {})
    finally:
        checkpoints.close()


def _largest_file(folder) -> str:
    paths = [os.path.join(root, name) for root, _, files in os.walk(folder) for name in files]
    return max(paths, key=os.path.getsize)  # the kernel's chunk


def test_a_checksum_mismatch_or_a_flipped_byte_is_refused(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path), keep_best=1)
    _save_all(checkpoints, [(10, 0.5)])
    checkpoints.close()
    state, record = _restore(tmp_path)
    np.testing.assert_array_equal(state["params"]["kernel"], np.full(SHAPE, 10.0))
    assert record["checksums"]["['params']['kernel']"] == "{:08x}".format(
        __import__("zlib").crc32(np.full(SHAPE, 10.0, np.float32).tobytes())
    )

    record_path = tmp_path / "checkpoints" / "10" / "record" / "metadata"
    saved = json.loads(record_path.read_text())
    saved["checksums"]["['params']['kernel']"] = "00000000"
    record_path.write_text(json.dumps(saved))
    with pytest.raises(UserError) as error:
        _restore(tmp_path)
    assert str(error.value) == (
        f"checkpoint 10 in {tmp_path}/checkpoints is corrupt (['params']['kernel'] does not "
        "match its saved checksum): move that step's folder aside to resume from an earlier "
        "one, or use a new --workdir (nothing was deleted)"
    )

    saved["checksums"].pop("['params']['kernel']")
    record_path.write_text(json.dumps(saved))
    path = _largest_file(tmp_path / "checkpoints" / "10" / "state")
    with open(path, "r+b") as f:  # 8 bytes in the middle of the array's chunk
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 8)
    with pytest.raises(UserError, match=r"^checkpoint 10 in .* (is corrupt|cannot be read)"):
        _restore(tmp_path)


def test_a_non_finite_state_from_an_older_checkpoint_is_refused(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path), keep_best=1)
    checkpoints.save(10, _state(float("nan")), {}, metrics=None)
    checkpoints.wait()
    checkpoints.close()
    record_path = tmp_path / "checkpoints" / "10" / "record" / "metadata"
    record_path.write_text("{}")  # as saved before checksums were recorded
    with pytest.raises(UserError, match=r"\(\['params'\]\['kernel'\] holds NaN or infinite"):
        _restore(tmp_path)


def test_a_full_disk_is_one_line_that_keeps_the_earlier_checkpoint(tmp_path):
    with tmpfs(tmp_path / "disk", "96k") as disk:
        checkpoints = RunCheckpoints(str(disk), keep_best=1)
        _save_all(checkpoints, [(10, 0.5)])
        with open(disk / "filler", "wb") as f:  # the disk fills up with something else
            with contextlib.suppress(OSError):
                f.write(b"\0" * 200_000)
        with pytest.raises(UserError) as error:
            checkpoints.save(20, _state(20.0), {}, metrics={"test_accuracy": 0.6})
            checkpoints.wait()
        message = str(error.value)
        assert message.startswith(f"cannot write checkpoint 20 to {disk}/checkpoints (no space ")
        assert message.endswith(
            "left on the device): free space (or move the workdir to a larger disk), then rerun "
            "the same command to resume from step 10"
        )
        os.remove(disk / "filler")
        state, _ = _restore(disk)
        np.testing.assert_array_equal(state["params"]["kernel"], np.full(SHAPE, 10.0))


def test_write_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json(str(path), {"loss": float("nan"), "accuracy": 0.5, "curve": [float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "curve": [None, 1.0], "loss": None}
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_metrics_line_cut_short_by_a_kill_does_not_block_the_resume(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in (5, 10, 15):
        writer.write(step, "train", {"loss": 1.0 / step, "accuracy": 0.5})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "split": "tr')  # killed while writing this record
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [5, 10, 15]
    MetricWriter(str(tmp_path), resume_step=10).close()  # the resume from step 10
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [5, 10]

    (tmp_path / "metrics.jsonl").write_text('{"step": 5}\nnot json\n{"step": 10}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not a JSON record: move"):
        read_metrics(str(tmp_path))
