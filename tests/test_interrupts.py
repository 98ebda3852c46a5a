"""StopRequests: SIGTERM / SIGINT become a request to stop after the step; the same signal
delivered twice is one request; a later second one stops at once."""

import os
import signal
import subprocess
import sys

from conftest import ROOT

from cnnjax.train.interrupts import StopRequests


def test_a_signal_is_a_stop_request_and_the_handlers_are_restored():
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    with StopRequests() as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # at once again (scancel via the worker): ignored
        assert stop.should_stop(2) and stop.signal_name == "SIGTERM"
    assert {number: signal.getsignal(number) for number in before} == before


SECOND_SIGNAL = """
import os, signal, time
from cnnjax.train import interrupts
interrupts.REPEAT_SECONDS = 0.2
with interrupts.StopRequests() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.should_stop(1)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGINT)  # the user insists
    time.sleep(5)
print("not stopped")
"""


def test_a_second_signal_later_stops_at_once():
    result = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 130, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "second SIGINT: stopping without saving; the run resumes from its last checkpoint"
    )
