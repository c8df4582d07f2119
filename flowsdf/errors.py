"""The one exception type that the command line turns into a one-line error."""


class FlowSDFError(Exception):
    """A problem the user can fix (bad input, missing file, wrong config).

    The CLI prints ``flowsdf: error: <message>`` on stderr and exits with status 2; anything
    else that escapes is a bug and keeps its traceback.
    """


_warned: set[str] = set()


def warn(message: str) -> None:
    """Tell the user about something missing or odd that the command works around: one line
    ``flowsdf: warning: <message>`` on stderr, once per process (a command may hit it twice)."""
    import sys

    if message not in _warned:
        _warned.add(message)
        print(f"flowsdf: warning: {message}", file=sys.stderr)
