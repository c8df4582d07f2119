"""Helpers the reliability tests share: run the command line, check its one error line, rewrite a
checkpoint the way a damaged or edited file would look."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flowsdf import checkpoint
from flowsdf.cli import main


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `flowsdf ARGV`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *needles):
    """Exit 2 and exactly one `flowsdf: error:` line (warnings aside) holding every needle."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("flowsdf: warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("flowsdf: error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])


def rewrite(path: Path, edit_tensors=None, edit_header=None, reseal: bool = True) -> None:
    """Rewrite a checkpoint with edited tensors and/or header; `reseal` gives it a valid digest
    (a deliberate edit that the digest cannot catch); without, the digests stored when it was
    saved stay."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    header = json.loads(metadata["flowsdf"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    if reseal:
        header = checkpoint.seal(header, tensors)
    save_file(tensors, str(path), metadata={"flowsdf": json.dumps(header)})
