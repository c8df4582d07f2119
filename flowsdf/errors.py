"""The one exception type that the command line turns into a one-line error."""


class FlowSDFError(Exception):
    """A problem the user can fix (bad input, missing file, wrong config).

    The CLI prints ``flowsdf: error: <message>`` on stderr and exits with status 2; anything
    else that escapes is a bug and keeps its traceback.
    """
