"""`flowsdf reconstruct` on a tiny trained run: outputs, and one error line per bad input."""

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from flowsdf import checkpoint, runs
from flowsdf.cli import main
from flowsdf.data import dataset
from flowsdf.mesh.export import load_mesh
from flowsdf.pipeline import FlowSDF


@pytest.fixture(scope="module")
def shaped_run(tmp_path_factory, tiny_flow_run, tiny_data_dir):
    """The tiny run with its decoders' output shifted so that the fields cross zero.

    Two epochs of training leave the tiny decoder positive everywhere (an empty shape); moving the
    last bias to the middle of its outputs gives every code a surface, which depends on the code.
    """
    run = tmp_path_factory.mktemp("runs") / "shaped"
    shutil.copytree(tiny_flow_run, run)
    image = dataset.load(tiny_data_dir).train.input.images[:1, 0]
    for model, stage, names in (("cnn", "stage1", ("encoder", "decoder")),
                                ("flow", "phase2", ("conditioner", "velocity", "decoder"))):
        pipe = FlowSDF.from_run(run, model, "cpu")
        with torch.no_grad():
            code = pipe(image).codes[0, 0]
            p = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) - 0.5  # (P, 3) near the centre
            values = pipe.decoder.field(code[None])(p, 0)  # (P,)
            pipe.decoder.l5.bias -= values.median()
        path = runs.checkpoint_path(run, stage)
        meta = checkpoint.read_header(path)["meta"]
        checkpoint.save(path, {n: getattr(pipe, n) for n in names}, meta=meta)
    return run


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, tiny_data_dir):
    folder = tmp_path_factory.mktemp("pictures")
    images = dataset.load(tiny_data_dir).heldout.input.images[:, 0]  # (N, 3, S, S)
    for i, img in enumerate(images[:2]):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"shape{i}.png")
    return folder


def reconstruct(capsys, *argv):
    code = main(["reconstruct", *map(str, argv), "--quiet", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_k_meshes_preview_and_summary(capsys, shaped_run, pictures, tmp_path):
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", out,
                               "--samples", "2", "--resolution", "24", "--format", "ply", "--seed", "3")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and len(summary["images"]) == 1
    entry = summary["images"][0]
    assert entry["file"] == str(pictures / "shape0.png") and entry["model"] == "flow" and entry["seed"] == 3
    assert len(entry["meshes"]) == 2
    for m in entry["meshes"]:
        mesh = load_mesh(out / m["path"])
        assert m["path"].endswith(".ply") and m["vertices"] == len(mesh.vertices) > 0
        assert m["faces"] == len(mesh.faces) and m["watertight"] == bool(mesh.is_watertight)
    uncertain = load_mesh(out / entry["uncertainty"]["path"])
    assert uncertain.visual.kind == "vertex" and len(np.unique(uncertain.visual.vertex_colors, axis=0)) > 1
    assert Image.open(out / entry["preview"]).size[0] > 100
    assert set(entry["timings_s"]) >= {"codes", "meshes", "uncertainty", "camera", "total", "write"}


def test_cnn_and_one_sample_write_one_mesh_without_uncertainty(capsys, shaped_run, pictures, tmp_path):
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, pictures, "--run", shaped_run, "--out", out, "--model", "cnn",
                               "--resolution", "16", "--format", "obj")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [e["file"] for e in summary["images"]] == [str(pictures / "shape0.png"), str(pictures / "shape1.png")]
    assert all(len(e["meshes"]) == 1 and e["uncertainty"] is None for e in summary["images"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.json", "shape0_sample1.obj", "shape0_preview.png", "shape1_sample1.obj", "shape1_preview.png"])


def test_refine_fits_the_codes_the_meshes_come_from(capsys, shaped_run, pictures, tmp_path):
    """--refine STEPS: the written mesh is the refined code's (pipe(..., refine=STEPS)), not the
    plain prediction's; the summary records the steps; a negative count is one error line."""
    from flowsdf.reconstruct import reconstruct_image

    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", out, "--model", "cnn",
                               "--resolution", "16", "--format", "ply", "--refine", "3")
    assert code == 0, err
    entry = json.loads((out / "summary.json").read_text())["images"][0]
    assert entry["refine_steps"] == 3
    pipe = FlowSDF.from_run(shaped_run, "cnn", "cpu")
    refined = reconstruct_image(pipe, pictures / "shape0.png", resolution=16, refine=3)
    plain = reconstruct_image(pipe, pictures / "shape0.png", resolution=16)
    torch.testing.assert_close(refined.codes, pipe(Image.open(pictures / "shape0.png"), refine=3).codes[0])
    assert not torch.equal(refined.codes, plain.codes)
    written = load_mesh(out / entry["meshes"][0]["path"])
    np.testing.assert_allclose(written.vertices, refined.meshes[0].vertices, atol=1e-5)
    code, _, err = reconstruct(capsys, pictures, "--run", shaped_run, "--out", tmp_path / "bad", "--refine", "-1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--refine must be at least 0" in lines[0]


def _png_bytes(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header claims width x height pixels (IHDR patched, CRC recomputed)."""
    data = bytearray(_png_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_inputs_each_give_one_error_and_the_rest_is_processed(capsys, shaped_run, pictures, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("not a picture at all")
    (bad / "cut.png").write_bytes(_png_bytes(64)[:200])
    (bad / "empty.png").write_bytes(b"")
    (bad / "huge.png").write_bytes(_huge_png())
    with monkeypatch.context() as m:  # Pillow reads the forged header (without its own bomb limit)
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(bad / "huge.png").size == (30000, 30000)
    (bad / "big.png").write_bytes(_huge_png(10000, 10000))  # under Pillow's limit, over ours
    (tmp_path / "no_pictures").mkdir()
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.filename) or real_load(self))
    inputs = [bad / "notes.png", bad / "cut.png", bad / "empty.png", bad / "huge.png", bad / "big.png",
              tmp_path / "missing.png", tmp_path / "no_pictures", pictures / "shape0.png"]
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, *inputs, "--run", shaped_run, "--out", out, "--resolution", "16")
    assert code == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 7 and all(ln.startswith("flowsdf: error: ") for ln in lines), err
    for path, reason in zip(inputs[:7], ["not a picture", "truncated", "empty", "over the limit", "over the limit",
                                         "no such file", "no PNG"], strict=True):
        assert sum(str(path) in ln and reason in ln for ln in lines) == 1, (path, reason, err)
    assert str(pictures / "shape0.png") in decoded  # the hook sees decoding ...
    assert not {str(bad / "huge.png"), str(bad / "big.png")} & set(decoded)  # ... refused from the header
    summary = json.loads((out / "summary.json").read_text())
    assert [e["file"] for e in summary["images"]] == [str(pictures / "shape0.png")]
    assert len(summary["failed"]) == 7
    written = {p.name for p in out.iterdir()}
    assert written == {"summary.json", "shape0_sample1.glb", "shape0_preview.png"}


def test_run_without_finished_model_and_unwritable_out(capsys, tiny_stage1_run, shaped_run, pictures, tmp_path):
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, pictures, "--run", tiny_stage1_run, "--out", out)  # Stage 1 only
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("flowsdf: error:") and "phase2" in lines[0]
    assert not out.exists()
    code, _, err = reconstruct(capsys, pictures, "--run", shaped_run, "--out", "/proc/flowsdf-test/out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot create --out /proc/flowsdf-test/out" in lines[0]
    code, _, err = reconstruct(capsys, pictures, "--run", tmp_path / "nowhere", "--out", out)
    assert code == 2 and "not a flowsdf run" in err and not out.exists()


def test_example_script_runs_on_a_trained_run(shaped_run, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    shutil.copytree(shaped_run, run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(root / "examples" / "reconstruct.py"), str(run),
                          "--samples", "2", "--resolution", "20"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert len((root / "examples" / "reconstruct.py").read_text().splitlines()) <= 40
    for name in ("sample1.glb", "uncertainty.glb"):
        mesh = load_mesh(run / "example" / name)
        assert len(mesh.faces) > 0
    assert "wrote" in res.stdout


def test_reconstruct_image_returns_what_the_viewer_needs(shaped_run, tiny_data_dir):
    from flowsdf.mesh.uncertainty import vertex_std
    from flowsdf.reconstruct import reconstruct_image

    pipe = FlowSDF.from_run(shaped_run, "flow", "cpu")
    image = dataset.load(tiny_data_dir).heldout.input.images[0, 0]  # (3, S, S)
    rec = reconstruct_image(pipe, image, samples=3, seed=4, resolution=16)
    S, D = pipe.image_size, pipe.latent_shape[0]
    assert rec.image.shape == (3, S, S) and rec.codes.shape == (3, D) and rec.silhouette.shape == (S, S)
    torch.testing.assert_close(rec.codes, pipe(image, samples=3, seed=4).codes[0])
    assert len(rec.meshes) == 3 and all(len(m.faces) > 0 for m in rec.meshes)
    assert rec.camera[0].shape == (3, 3) and rec.camera[1].shape == (4, 4) and 0.0 <= rec.camera_iou <= 1.0
    v = rec.mean_mesh.vertices
    assert rec.vertex_std.shape == (len(v),) and rec.mean_mesh.visual.vertex_colors.shape == (len(v), 4)
    np.testing.assert_allclose(rec.vertex_std, vertex_std([pipe.field(c) for c in rec.codes], v), rtol=1e-6)
    assert rec.std_max == pytest.approx(rec.vertex_std.max())
    assert set(rec.timings) == {"codes", "meshes", "uncertainty", "camera", "total"}
    again = reconstruct_image(pipe, image, samples=3, seed=4, resolution=16)
    assert np.array_equal(again.meshes[1].vertices, rec.meshes[1].vertices)
    one = reconstruct_image(pipe, image, samples=1, resolution=16)
    assert one.mean_mesh is None and one.vertex_std is None and len(one.meshes) == 1
