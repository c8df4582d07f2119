"""Reconstruct a 3-D shape from one picture with a trained run, and save it as .glb files.

Run the main job first (`flowsdf reproduce --preset quick` writes runs/reproduce-quick), then:

    python examples/reconstruct.py                                   # a held-out shape of the dataset
    python examples/reconstruct.py runs/reproduce-quick --image my.png  # one object on a plain background
"""

import argparse
from pathlib import Path

from flowsdf import runs
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import reconstruct_image

parser = argparse.ArgumentParser()
parser.add_argument("run", nargs="?", type=Path, default=Path("runs/reproduce-quick"))
parser.add_argument("--image", help="a picture (default: held-out shape 0 of the run's dataset)")
parser.add_argument("--samples", type=int, default=4)
parser.add_argument("--resolution", type=int, default=128)
args = parser.parse_args()

pipe = FlowSDF.from_run(args.run, model="flow", device="auto")
# Without --image: a shape the model never saw in training, from the run's own dataset.
picture = args.image or runs.run_data(pipe.cfg, args.run, None, progress=False).heldout.input.images[0, 0]

rec = reconstruct_image(pipe, picture, samples=args.samples, seed=0, resolution=args.resolution)
out = args.run / "example"
out.mkdir(exist_ok=True)
rec.meshes[0].export(out / "sample1.glb")
if rec.mean_mesh is not None:  # coloured by how much the samples disagree (samples >= 2)
    rec.mean_mesh.export(out / "uncertainty.glb")
print(f"{len(rec.meshes[0].vertices)} vertices, watertight: {rec.meshes[0].is_watertight}, "
      f"{rec.timings['total']:.2f} s; wrote {out}")
