"""SIGTERM and SIGINT as a request to stop after the current step, with a checkpoint of it.

SLURM, Kubernetes and TPU preemption send SIGTERM some time before the kill; Ctrl-C sends SIGINT.
While `StopRequests` is active (the training loop), either one only sets a flag that the loop
reads after each step, so the step in flight completes, is saved and the process exits with
128 + the signal's number. A second signal, from a user who does not want to wait for the save,
stops at once without saving (a kill -9's outcome: the run resumes from its last checkpoint); one
that comes within REPEAT_SECONDS of the first is the same request delivered twice (SLURM's
scancel and time limit signal every process of a job: the sweep worker and the run it forwards
to), and is ignored.

With several processes (`jax.distributed`), a signal reaches each process at a different step.
JAX's preemption service catches SIGTERM itself and `reached_preemption_sync_point(step)` turns
true at the same step on every process, so they all save that step; SIGINT is passed on to it as
a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

HANDLED = (signal.SIGTERM, signal.SIGINT)
REPEAT_SECONDS = 2.0


class StopRequests:
    """A context manager that turns SIGTERM / SIGINT into `should_stop(step) == True`."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._multi_process = False

    def __enter__(self) -> StopRequests:
        import jax

        self._multi_process = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return self  # Python handles signals on the main thread only: defaults stay
        handled = (signal.SIGINT,) if self._multi_process else HANDLED
        for number in handled:
            self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_signal(self, number: int, frame) -> None:
        del frame
        now = time.monotonic()
        if self.signal_number is not None and now - self._first_at < REPEAT_SECONDS:
            return  # the same request, delivered twice
        if self.signal_number is not None:  # the second one: stop now
            print(
                f"second {signal.Signals(number).name}: stopping without saving; the run resumes "
                "from its last checkpoint",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + number)
        self.signal_number, self._first_at = number, now
        if self._multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested and every process is at `step` (call it each step)."""
        if self._multi_process:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_number = self.signal_number or signal.SIGTERM
                return True
            return False
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number or signal.SIGTERM).name
