"""The `flowsdf` command line. Each subcommand is a function of parsed args; `main(argv)` returns
an exit status so tests can call it directly. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import errno
import sys

from flowsdf.cli import (
    bench,
    check_grads,
    data,
    eval,
    generate,
    reconstruct,
    reproduce,
    train,
    view,
)
from flowsdf.errors import FlowSDFError

# One module per subcommand, each with add_parser(sub) and run(args); the order is --help's.
COMMANDS = (data, train, check_grads, eval, reproduce, reconstruct, generate, view, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowsdf",
        description="Image-to-3-D without 3-D supervision: neural SDFs trained from 2-D silhouettes.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except FlowSDFError as e:
        print(f"flowsdf: error: {e}", file=sys.stderr)
        status = 2
    except OSError as e:
        # A full disk is never a bug: one line wherever it strikes (the package's own writers
        # already say which file; this catches those of the libraries it calls).
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"flowsdf: error: cannot write {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("flowsdf: interrupted; finished epochs are saved: continue with `train ... --resume`, "
              "or rerun the same `reproduce` command", file=sys.stderr)
        status = 130
    # A training command under torchrun joined a process group: leave it cleanly (see there).
    distributed = sys.modules.get("flowsdf.train.distributed")
    if distributed is not None and distributed.active():
        distributed.exit_process(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
