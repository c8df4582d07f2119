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
from flowsdf.mesh.uncertainty import SCALE_MAX
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
    assert summary["failed"] == [] and len(summary["images"]) == 1 and summary["skipped"] == []
    assert summary["temperature"] == FlowSDF.from_run(shaped_run, "flow", "cpu").cfg.flow.temperature == 1.0
    assert summary["consistency"] == 0.0  # the default: every draw kept
    entry = summary["images"][0]
    assert entry["file"] == str(pictures / "shape0.png") and entry["model"] == "flow" and entry["seed"] == 3
    assert len(entry["meshes"]) == 2 and entry["samples"] == entry["samples_requested"] == 2
    for m in entry["meshes"]:
        mesh = load_mesh(out / m["path"])
        assert m["path"].endswith(".ply") and m["vertices"] == len(mesh.vertices) > 0
        assert m["faces"] == len(mesh.faces) and m["watertight"] == bool(mesh.is_watertight)
    uncertain = load_mesh(out / entry["uncertainty"]["path"])
    assert uncertain.visual.kind == "vertex" and len(np.unique(uncertain.visual.vertex_colors, axis=0)) > 1
    assert Image.open(out / entry["preview"]).size[0] > 100
    assert entry["uncertainty"]["colour_scale_max"] == SCALE_MAX
    assert set(entry["timings_s"]) >= {"codes", "mesh", "uncertainty", "camera", "total", "samples24", "write"}
    # The picture exactly as the model saw it, the verdict and how the picture was read and prepared.
    pipe = FlowSDF.from_run(shaped_run, "flow", "cpu")
    seen = np.asarray(Image.open(out / entry["prepared"]), dtype=np.float32) / 255.0  # (S, S, 3)
    np.testing.assert_allclose(seen, pipe.load_images(pictures / "shape0.png")[0][0].permute(1, 2, 0).numpy(),
                               atol=0.5 / 255 + 1e-6)
    assert set(entry["verdict"]) >= {"score", "fit", "silhouette_iou", "low", "warning"}
    assert entry["preparation"]["prepared"] and entry["preparation"]["background"]["kind"] == "black"
    assert entry["preparation"]["picture"]["format"] == "PNG"
    assert summary["provenance"]["torch"] == torch.__version__ and "git_commit" in summary["provenance"]


def test_a_deterministic_model_asked_for_k_samples_says_so_once_and_writes_one_mesh(capsys, shaped_run, pictures,
                                                                                   tmp_path):
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, pictures, "--run", shaped_run, "--out", out, "--model", "cnn",
                               "--samples", "4", "--resolution", "16", "--format", "obj")
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if "deterministic" in ln]
    assert warnings == [("flowsdf: warning: the cnn model is deterministic: --samples 4 would give 4 identical "
                         "shapes; one mesh per picture is made")]  # once for the call, not once per picture
    summary = json.loads((out / "summary.json").read_text())
    assert [e["file"] for e in summary["images"]] == [str(pictures / "shape0.png"), str(pictures / "shape1.png")]
    assert summary["temperature"] is None and summary["consistency"] is None  # no noise to scale or redraw
    for e in summary["images"]:
        assert len(e["meshes"]) == 1 and e["uncertainty"] is None
        assert e["samples"] == 1 and e["samples_requested"] == 4 and "deterministic" in e["notes"][0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.json"] + [f"shape{i}_{s}" for i in (0, 1) for s in ("sample1.obj", "prepared.png", "preview.png")])


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
    assert code == 2 and len(lines) == 1 and "--refine must be from 0 to 100,000, got -1" in lines[0]


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
    code, _, err = reconstruct(capsys, *inputs, "--run", shaped_run, "--out", out, "--resolution", "16",
                               "--samples", "1")
    assert code == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("flowsdf: warning: ")]
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
    assert written == {"summary.json", "shape0_sample1.glb", "shape0_prepared.png", "shape0_preview.png"}


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
    from flowsdf.reconstruct import code_meshes, reconstruct_image, spread

    pipe = FlowSDF.from_run(shaped_run, "flow", "cpu")
    image = dataset.load(tiny_data_dir).heldout.input.images[0, 0]  # (3, S, S)
    rec = reconstruct_image(pipe, image, samples=3, seed=4, resolution=16)
    S, L = pipe.image_size, pipe.latent_shape
    assert rec.image.shape == (3, S, S) and rec.codes.shape == (3, *L) and rec.silhouette.shape == (S, S)
    torch.testing.assert_close(rec.codes, pipe(image, samples=3, seed=4).codes[0])
    assert rec.camera[0].shape == (3, 3) and rec.camera[1].shape == (4, 4) and 0.0 <= rec.camera_iou <= 1.0
    assert rec.prepared is None and rec.verdict.fit is None and rec.verdict.iou == rec.camera_iou
    # The result is the mean code's mesh, coloured by the samples' spread at its vertices.
    v = rec.mesh.vertices
    mean = code_meshes(pipe, rec.codes.mean(0)[None], 16)[0]
    np.testing.assert_array_equal(v, mean.vertices)
    assert rec.mean_mesh is rec.mesh and rec.vertex_std.shape == (len(v),)
    assert rec.mesh.visual.vertex_colors.shape == (len(v), 4)
    np.testing.assert_allclose(rec.vertex_std, spread(pipe, rec.codes, v, 16))
    assert rec.std_max == pytest.approx(rec.vertex_std.max()) and rec.colour_max == SCALE_MAX
    assert set(rec.timings) == {"codes", "mesh", "uncertainty", "camera", "total"}  # no sample meshed yet
    # Sample meshes are made when asked for, all K in one batched pass: each the code's own mesh.
    meshes = rec.sample_meshes()
    assert len(meshes) == 3 and all(len(m.faces) > 0 for m in meshes) and "samples16" in rec.timings
    for code, mesh in zip(rec.codes, meshes):
        np.testing.assert_allclose(mesh.vertices, pipe.mesh(code, resolution=16)[0], atol=1e-5)
    assert rec.sample_mesh(1) is meshes[1] and rec.meshes[2] is meshes[2]
    assert len(rec.preview_samples()) == 3 and len(rec.preview_mesh().faces) > 0
    again = reconstruct_image(pipe, image, samples=3, seed=4, resolution=16)
    assert np.array_equal(again.sample_meshes()[1].vertices, meshes[1].vertices)  # same call, same bits
    one = reconstruct_image(pipe, image, samples=1, resolution=16)
    assert one.mean_mesh is None and one.vertex_std is None and one.meshes == [one.mesh]


def test_reconstruct_image_prepares_pictures_and_says_how_far_to_trust_them(shaped_run, tiny_data_dir, tmp_path):
    """A picture on white off-centre is prepared like the render it came from; a picture unlike the
    training pictures (a large object cut off by the border) is flagged; prepare=False keeps the
    plain padding."""
    from flowsdf.data.images import load_image
    from flowsdf.reconstruct import judge, reconstruct_image

    pipe = FlowSDF.from_run(shaped_run, "flow", "cpu")
    views = dataset.load(tiny_data_dir).heldout.input
    render = (views.images[0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (S, S, 3)
    mask = views.masks[0, 0].numpy() > 0.5
    S = render.shape[0]
    white = np.full((3 * S, 3 * S, 3), 245, np.uint8)
    white[S // 2 : S // 2 + S, 2 * S - S // 3 : 3 * S - S // 3][mask] = render[mask]  # off-centre, on white
    Image.fromarray(white).save(tmp_path / "white.png")
    rec = reconstruct_image(pipe, tmp_path / "white.png", samples=1, resolution=16)
    assert rec.prepared.prepared and rec.prepared.background.kind == "white"
    found = rec.prepared.mask.numpy() > 0.5  # (S, S): the object, centred in the model's frame
    ys, xs = np.nonzero(found)
    assert abs((xs.min() + xs.max() + 1) / 2 - S / 2) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - S / 2) <= 1
    torch.testing.assert_close(rec.image, pipe.load_images(tmp_path / "white.png")[0][0])
    plain = reconstruct_image(pipe, tmp_path / "white.png", samples=1, resolution=16, prepare=False)
    torch.testing.assert_close(plain.image, load_image(tmp_path / "white.png", S))
    assert plain.verdict.low  # the model never saw a white background
    cut = np.full((64, 64, 3), 250, np.uint8)
    cut[5:64, 0:50] = (40, 90, 160)  # most of the picture, cut off by two borders
    Image.fromarray(cut).save(tmp_path / "cut.png")
    flagged = reconstruct_image(pipe, tmp_path / "cut.png", samples=1, resolution=16)
    assert flagged.verdict.low and flagged.verdict.fit < 0.5 and "border" in flagged.verdict.warning
    assert judge(None, 0.9).score == pytest.approx(0.9) and not judge(None, 0.9).low
    assert judge(None, 0.3).low and "IoU 0.30" in judge(None, 0.3).warning
    assert "no surface" in judge(None, 0.0, empty=True).warning


def test_outputs_never_overwrite_an_input_and_skipped_files_are_named(capsys, shaped_run, pictures, tmp_path):
    """--out the input folder, holding x.png and x_preview.png: x's preview would be written over
    the picture x_preview.png, so x's outputs get another name; both pictures are read, neither
    is changed; a file that is not a picture is named in the summary."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(pictures / "shape0.png", folder / "x.png")
    shutil.copy(pictures / "shape1.png", folder / "x_preview.png")
    (folder / "notes.txt").write_text("not a picture")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = reconstruct(capsys, folder, "--run", shaped_run, "--out", folder, "--samples", "1",
                               "--resolution", "16")
    assert code == 0, err
    for name, data in before.items():
        assert (folder / name).read_bytes() == data, name
    summary = json.loads((folder / "summary.json").read_text())
    assert [e["name"] for e in summary["images"]] == ["x-2", "x_preview"]
    assert (folder / "x-2_preview.png").is_file() and (folder / "x_preview_preview.png").is_file()
    assert summary["skipped"] == [str(folder / "notes.txt")]


def test_reading_notes_go_to_the_summary(capsys, shaped_run, pictures, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    picture = Image.open(pictures / "shape0.png").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned; EXIF says: rotate back
    picture.save(folder / "turned.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    code, _, err = reconstruct(capsys, folder, "--run", shaped_run, "--out", out, "--samples", "1",
                               "--resolution", "16", "--no-prepare")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["images"][0]
    assert summary["prepare"] is False and entry["preparation"]["prepared"] is False
    assert any("EXIF orientation (8)" in n for n in entry["preparation"]["notes"])
    assert entry["preparation"]["picture"]["format"] == "JPEG"


def test_guidance_reaches_the_samples_and_is_recorded(capsys, shaped_run, pictures, tmp_path):
    """--guidance W samples with v_null + W (v_cond - v_null): W = 1 is the run's default here (its
    flow.guidance), so it writes the same meshes as no flag; W = 4 other ones; a W out of range is
    one error line before anything is loaded."""
    outs = {}
    for label, flags in (("default", []), ("one", ["--guidance", "1"]), ("four", ["--guidance", "4"])):
        out = tmp_path / label
        code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", out, "--samples", "1",
                                   "--resolution", "16", "--format", "ply", *flags)
        assert code == 0, err
        entry = json.loads((out / "summary.json").read_text())["images"][0]
        outs[label] = (entry["guidance"], np.asarray(load_mesh(out / entry["meshes"][0]["path"]).vertices))
    assert outs["default"][0] == outs["one"][0] == 1.0 and outs["four"][0] == 4.0
    np.testing.assert_array_equal(outs["default"][1], outs["one"][1])
    assert outs["four"][1].shape != outs["one"][1].shape or not np.array_equal(outs["four"][1], outs["one"][1])
    code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", tmp_path / "bad",
                               "--guidance", "101")
    assert code == 2 and err.startswith("flowsdf: error: --guidance") and not (tmp_path / "bad").exists()


def test_temperature_and_consistency_flags_reach_the_run_and_are_recorded(capsys, shaped_run, pictures, tmp_path):
    """--temperature T widens the samples (other meshes than T = 1) and is recorded; --consistency
    on a world-frame run (the tiny one) is one error line before any output; out-of-range values
    too."""
    meshes = {}
    for label, flags in (("plain", []), ("hot", ["--temperature", "3"])):
        out = tmp_path / label
        code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", out, "--samples", "1",
                                   "--resolution", "16", "--format", "ply", *flags)
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())
        meshes[label] = (summary["temperature"], np.asarray(load_mesh(out / summary["images"][0]["meshes"][0]["path"]).vertices))
    assert meshes["plain"][0] == 1.0 and meshes["hot"][0] == 3.0
    assert meshes["hot"][1].shape != meshes["plain"][1].shape or not np.array_equal(meshes["hot"][1], meshes["plain"][1])
    for flags, message in ((["--consistency", "0.9"], "consistency needs a view-frame run"),
                           (["--consistency", "1.5"], "--consistency must be"), (["--temperature", "0"], "--temperature must be")):
        out = tmp_path / "refused"
        code, _, err = reconstruct(capsys, pictures / "shape0.png", "--run", shaped_run, "--out", out, *flags)
        assert code == 2 and err.startswith(f"flowsdf: error: {message}") and err.count("\n") == 1, err
        assert not out.exists()
