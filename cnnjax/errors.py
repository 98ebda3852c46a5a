"""The one exception type that the command line turns into a one-line message."""


class UserError(Exception):
    """A problem with the user's input (config, data, workdir) that the user can fix.

    The message is a single line that names the problem and the fix; the command line prints it
    without a traceback and exits non-zero.
    """
