"""The exceptions that the command line turns into one line, and the exit statuses it uses.

Exit statuses of `cnnjax train` (documented in the README):

    0    finished: results.json written
    2    a problem with the input the user can fix (UserError): nothing in the workdir changed
    3    training diverged (TrainingDiverged): a non-finite loss or gradient norm; nothing after
         the last good checkpoint was saved
    130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (TrainingInterrupted): the current step
         was saved; rerunning the same command resumes it (128 + the signal's number, the
         shell's convention for "ended by a signal")
"""

import re

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class UserError(Exception):
    """A problem with the user's input (config, data, workdir) that the user can fix.

    The message is a single line that names the problem and the fix; the command line prints it
    without a traceback and exits non-zero.
    """

    exit_status = EXIT_USER_ERROR


class TrainingDiverged(UserError):
    """The loss or the gradient norm became non-finite; the message names the step and the last
    good checkpoint."""

    exit_status = EXIT_DIVERGED


class TrainingInterrupted(UserError):
    """A SIGTERM or SIGINT stopped training after saving the current step."""

    def __init__(self, message: str, *, signal_number: int, step: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.step = step

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return 128 + self.signal_number


# "config.data.batch_size" in a message, not "--config.data..." (already a flag), config.json or
# a path ending in config.py.
_CONFIG_KEY = re.compile(r"(?<![\w./-])config\.(?!(?:json|py)\b)(?=[a-z_])")


def for_command_line(message: str) -> str:
    """`message` as the command line prints it: the library names config keys
    (`config.data.batch_size`), which on the command line are `--config.data.batch_size`."""
    return _CONFIG_KEY.sub("--config.", message)


def describe(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no details'}"
