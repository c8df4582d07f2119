"""Regenerate the documentation's tables from the JSON records of the runs that measured them.

A record is a small JSON file in docs/results/ (a run's figures, its command, device and date),
made from what a run wrote with `--record`; a table is the text between `<!-- table:NAME -->` and
`<!-- end -->` in README.md or a docs/*.md page. Rebuilding the tables from the records means a
figure in the docs cannot drift from its run.

    python benchmarks/docs_tables.py                                  # rewrite every table
    python benchmarks/docs_tables.py --record quick runs/q/eval/eval.json --command "flowsdf reproduce --preset quick"
    python benchmarks/docs_tables.py --check                          # exit 1 if a table is stale
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TABLE = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.S)
MODEL_NAMES = {"cnn": "CNN encoder (Stage 1)", "flow": "Rectified flow (Stage 2)", "flow_rgb": "Rectified flow + RGB (Stage 3)"}


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def eval_record(eval_json: Path, command: str) -> dict:
    """The figures a reproduction's docs tables show, from its eval.json (flowsdf eval's output)."""
    result = json.loads(eval_json.read_text())
    models = {}
    for name, r in result["models"].items():
        s, sh = r["silhouettes"], r["shapes_3d"]
        models[name] = {
            "train_bce": s["train_views"]["bce"], "train_iou": s["train_views"]["iou"], "novel_iou": s["novel_views"]["iou"],
            "heldout_input_iou": s["heldout_input"]["iou"], "heldout_novel_iou": s["heldout_novel"]["iou"],
            "train_3d_iou": sh["train"]["mean"]["volumetric_iou"], "heldout_3d_iou": sh["heldout"]["mean"]["volumetric_iou"],
            "heldout_chamfer": sh["heldout"]["mean"]["chamfer_l1"], "heldout_fscore": sh["heldout"]["mean"]["fscore"],
            "training_seconds": r.get("training_seconds"),
        }
        if "retrieval" in r:
            models[name]["retrieval"] = r["retrieval"]
    return {"command": command, "device": result["device"], "preset": result.get("preset"), "frame": result.get("frame"),
            "mesh_resolution": result["mesh_resolution"], "date": datetime.date.today().isoformat(),
            "provenance": result.get("provenance"), "models": models}


def headline(record: dict) -> str:
    lines = ["| " + record["preset"] + " preset | train-view BCE | novel-view IoU | held-out IoU (input / novel) | held-out 3-D IoU | training time |",
             "|---|---|---|---|---|---|"]
    for name, m in record["models"].items():
        minutes = fmt(m["training_seconds"] / 60 if m["training_seconds"] else None, ".1f")
        lines.append(f"| {MODEL_NAMES.get(name, name)} | {m['train_bce']:.4f} | {m['novel_iou']:.3f} | "
                     f"{m['heldout_input_iou']:.3f} / {m['heldout_novel_iou']:.3f} | {fmt(m['heldout_3d_iou'])} | {minutes} min |")
    lines.append(f"\n`{record['command']}`; {record['device']}; {record['date']}.")
    return "\n".join(lines) + "\n"


def comparison(record: dict) -> str:
    """Several runs side by side: one row per run (a record with "rows")."""
    head = ("| recipe | held-out IoU input / novel | held-out 3-D IoU | Chamfer-L1 | F@1% | F@2% | training time |\n"
            "|---|---|---|---|---|---|---|")
    rows = [f"| {r['name']} | {fmt(r.get('heldout_input_iou'))} / {fmt(r.get('heldout_novel_iou'))} | {fmt(r.get('heldout_3d_iou'))} | "
            f"{fmt(r.get('heldout_chamfer'), '.4f')} | {fmt(r.get('fscore_1'))} | {fmt(r.get('fscore_2'))} | "
            f"{fmt(r['training_seconds'] / 60 if r.get('training_seconds') else None, '.1f')} min |" for r in record["rows"]]
    return "\n".join([head, *rows]) + f"\n\n`{record['command']}`; {record['device']}; {record['date']}.\n"


# table name -> (record file, how to draw it)
TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "quick-headline": ("quick.json", headline),
}


def rewrite(check: bool) -> list[str]:
    """Rewrite every known table from its record; returns the tables that changed (or would)."""
    changed = []
    for page in PAGES:
        text = page.read_text()

        def body(m: re.Match) -> str:
            name = m["name"]
            if name not in TABLES:
                raise SystemExit(f"{page}: no table named {name!r} in {__file__}")
            file, draw = TABLES[name]
            new = draw(json.loads((RECORDS / file).read_text()))
            if new != m["body"]:
                changed.append(f"{page.name}:{name}")
            return m.group(1) + new + m.group(4)

        new_text = TABLE.sub(body, text)
        if new_text != text and not check:
            page.write_text(new_text)
    return changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", nargs=2, metavar=("NAME", "EVAL_JSON"), help="make docs/results/NAME.json from a run's eval.json")
    p.add_argument("--command", default="", help="with --record: the command that produced the run")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its record")
    args = p.parse_args()
    if args.record:
        RECORDS.mkdir(parents=True, exist_ok=True)
        name, path = args.record
        (RECORDS / f"{name}.json").write_text(json.dumps(eval_record(Path(path), args.command), indent=1) + "\n")
    changed = rewrite(args.check)
    print(json.dumps({"changed": changed}))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
