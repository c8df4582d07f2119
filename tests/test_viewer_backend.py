"""The viewer's computations without the web page: paths, panes, limits and refusals."""

import dataclasses

import numpy as np
import pytest
import torch
import trimesh
from bad_pictures import declared_png, empty_file, text_file
from PIL import Image

from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF
from flowsdf.viewer import panes
from flowsdf.viewer.backend import MAX_SEED, Limits, Viewer
from flowsdf.viewer.latent import fit_frame
from flowsdf.viewer.recon import MEAN, SINGLE_COLOUR


@pytest.fixture(scope="module")
def viewer(tiny_flow_run):
    return Viewer.load(tiny_flow_run, "cpu", progress=False)


@pytest.fixture(scope="module")
def data(tiny_data_dir):
    return dataset.load(tiny_data_dir)


def test_dataset_pictures_carry_their_view(viewer, data):
    views = data.train.novel
    V = views.images.shape[1]
    pic = viewer.dataset_picture("novel", V + V - 1)  # shape 1, last view
    torch.testing.assert_close(pic.image, views.images[1, V - 1])
    torch.testing.assert_close(pic.mask, views.masks[1, V - 1])
    torch.testing.assert_close(pic.c2w, views.c2w[1, V - 1])
    assert viewer.split_size("novel") == views.images.shape[0] * V
    assert viewer.split_size("held-out") == data.heldout.input.images.shape[0] * data.heldout.input.images.shape[1]
    assert len(viewer.split_thumbnails("training")) == viewer.split_size("training")


def test_step_flow_is_the_pipelines_path_and_is_cached(viewer):
    pic = viewer.dataset_picture("training", 1)
    path = viewer.step_flow(pic, True, 7)
    latents, sils = viewer.flow.flow_steps(pic.image[None], pic.K[None], pic.c2w[None], seed=7)
    np.testing.assert_allclose(path.latents, latents[:, 0].double().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(path.silhouettes, sils[:, 0].numpy(), atol=1e-6)
    final = viewer.flow(pic.image[None], seed=7).codes[0, 0]  # the sampled code is the last state
    np.testing.assert_allclose(path.latents[-1], final.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path.norms, np.linalg.norm(path.latents, axis=1))
    np.testing.assert_allclose(path.plane, viewer.frame.project(path.latents))
    assert path.steps == viewer.flow.cfg.flow.steps
    assert viewer.step_flow(pic, True, 7) is path  # the slider only redraws
    assert viewer.step_flow(pic, True, 8) is not path


def test_noise_scaling_switch_starts_from_the_same_noise_unscaled(viewer):
    pic = viewer.dataset_picture("training", 0)
    on, off = viewer.step_flow(pic, True, 3), viewer.step_flow(pic, False, 3)
    # Same seed, same unit noise; the scaled flow starts at sigma times it, the ablation at it.
    np.testing.assert_allclose(on.latents[0], viewer.flow.sigma * off.latents[0], rtol=1e-5, atol=1e-7)
    assert viewer.noscale.sigma == 1.0
    assert off.norms[0] == pytest.approx(np.sqrt(viewer.flow.latent_shape[0]), rel=0.25)
    assert "off" in off.title and "on" in on.title


def test_frame_is_the_stage1_codes_principal_plane(tiny_flow_run, viewer, data):
    from flowsdf.pipeline import FlowSDF

    cnn = FlowSDF.from_run(tiny_flow_run, "cnn", "cpu")
    with torch.no_grad():
        codes = cnn.encoder(data.train.input.images.flatten(0, 1)).double().numpy()  # (M, D)
    ref = fit_frame(codes, "")
    np.testing.assert_allclose(viewer.frame.axes, ref.axes, atol=1e-5)
    np.testing.assert_allclose(viewer.frame.mean, ref.mean, atol=1e-6)
    assert "Stage-1" in viewer.frame.source


def test_step_panes_show_that_steps_silhouette_and_the_ground_truth(viewer):
    pic = viewer.dataset_picture("held-out", 0)
    path = viewer.step_flow(pic, True, 0)
    for step in (0, path.steps):
        plot, sil, gt, caption = viewer.step_panes(path, step)
        np.testing.assert_array_equal(sil, panes.gray_pane(path.silhouettes[step]))
        np.testing.assert_array_equal(gt, panes.gray_pane(pic.mask.numpy()))
        assert f"Step {step} of {path.steps}" in caption
        iou = silhouette_iou(torch.from_numpy(path.silhouettes[step])[None], pic.mask[None]).item()
        assert f"{iou:.3f}" in caption
    assert viewer.step_panes(path, 99)[3].startswith(f"**Step {path.steps} of")  # clamped


def test_bad_requests_are_one_clear_error_each(viewer, tmp_path):
    with pytest.raises(FlowSDFError, match="unknown split"):
        viewer.dataset_picture("test", 0)
    with pytest.raises(FlowSDFError, match="has pictures 0.."):
        viewer.dataset_picture("training", viewer.split_size("training"))
    pic = viewer.dataset_picture("training", 0)
    for seed in (-1, 1.5, MAX_SEED + 1, None):
        with pytest.raises(FlowSDFError, match="seed must be a whole number"):
            viewer.step_flow(pic, True, seed)
    empty, text = empty_file(tmp_path / "empty.png"), text_file(tmp_path / "notes.png")
    with pytest.raises(FlowSDFError, match="empty"):
        viewer.upload_picture(empty)
    with pytest.raises(FlowSDFError, match="^notes.png: not a picture"):  # the server's path is not shown
        viewer.upload_picture(text)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (40, 30), (250, 250, 250)).save(blank)
    with pytest.raises(FlowSDFError, match="^blank.png: no object found on the white background"):
        viewer.upload_picture(blank)
    with pytest.raises(FlowSDFError, match="over the limit"):
        viewer.upload_picture(declared_png(tmp_path / "huge.png", 100_000, 100_000))
    lim = viewer.limits
    for k, res in ((0, 32), (lim.max_samples + 1, 32), (1, lim.min_resolution - 1), (1, lim.max_resolution + 1)):
        with pytest.raises(FlowSDFError, match="must be from"):
            viewer.reconstruct(text, k, res, 0, progress=lambda f, d: None)
    for w in (0.5, 7.5):
        with pytest.raises(FlowSDFError, match="guidance must be from"):
            viewer.reconstruct(text, 1, 32, 0, progress=lambda f, d: None, guidance=w)


def test_a_run_without_the_ablation_flow_refuses_scaling_off(viewer):
    bare = Viewer(viewer.run_dir, viewer.flow, None, viewer.data, viewer.frame, Limits())
    with pytest.raises(FlowSDFError, match="without noise scaling"):
        bare.step_flow(bare.dataset_picture("training", 0), False, 0)


def test_reconstruct_writes_meshes_trimesh_reads_and_shows_each_sample(tiny_surface_run, tiny_data_dir, tmp_path):
    viewer = Viewer.load(tiny_surface_run, "cpu", progress=False)
    picture = tmp_path / "shape.png"
    image = dataset.load(tiny_data_dir).train.input.images[0, 0]  # (3, S, S)
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(picture)
    seen = []
    out = viewer.reconstruct(picture, 2, 32, 0, progress=lambda f, d: seen.append(f))
    assert seen == sorted(seen) and seen[0] == 0.0  # progress only moves forward
    meshes = {fmt: trimesh.load(out.files[fmt], force="mesh", process=False) for fmt in ("glb", "obj", "ply")}
    n = len(meshes["glb"].vertices)
    assert n > 0 and all(len(m.vertices) == n for m in meshes.values())
    colors = meshes["ply"].visual.vertex_colors  # K = 2: uncertainty colours on the mean mesh
    assert colors.shape == (n, 4) and len(np.unique(colors[:, :3], axis=0)) > 1
    assert out.silhouette.shape[2] == 3 and "2 sample(s)" in out.caption and "Prepared:" in out.caption
    assert out.choices == [MEAN, "sample 1", "sample 2"] and len(out.gallery) == 2
    assert out.colour_bar is not None and out.colour_bar.shape[2] == 3
    assert "silhouette IoU" in out.verdict
    files, caption = viewer.show(out.key, "sample 2")  # meshed at full resolution now, one colour
    sample = trimesh.load(files["ply"], force="mesh", process=False)
    assert len(sample.faces) > 0 and (sample.visual.vertex_colors == SINGLE_COLOUR).all()
    assert "**Shown: sample 2** of 2 sample(s)" in caption
    with pytest.raises(FlowSDFError, match="no sample 3"):
        viewer.show(out.key, "sample 3")
    with pytest.raises(FlowSDFError, match="no longer kept"):
        viewer.show("r999", "sample 1")
    one = viewer.reconstruct(picture, 1, 32, 0, progress=lambda f, d: None)
    assert one.choices == ["sample 1"] and one.colour_bar is None
    single = trimesh.load(one.files["glb"], force="mesh", process=False)
    assert (single.visual.vertex_colors == SINGLE_COLOUR).all()  # readable, not a pale default


def test_examples_are_held_out_shapes_on_other_backgrounds(viewer):
    examples = viewer.examples()
    assert len(examples) == 4 and all(p.is_file() and p.parent.parent == viewer.workdir for p, _ in examples)
    corners = [np.asarray(Image.open(p))[0, 0] for p, _ in examples]
    assert (corners[0] == 0).all() and (corners[1] > 240).all()  # black, then white
    assert all("held-out shape" in c for _, c in examples)


def test_limits_read_as_the_page_counts_and_default_like_reconstruct():
    from flowsdf.cli.reconstruct import DEFAULT_RESOLUTION, DEFAULT_SAMPLES

    lim = Limits()
    assert lim.max_upload_bytes == 10 * 1024 * 1024 and lim.upload_limit_text == "10.0 MB (10,485,760 bytes)"
    assert Limits(max_upload_mb=0.2).upload_limit_text == "204.8 KB (209,715 bytes)"
    assert (lim.default_samples, lim.default_resolution) == (DEFAULT_SAMPLES, DEFAULT_RESOLUTION)
    small = Limits(max_samples=2, max_resolution=40)
    assert (small.default_samples, small.default_resolution) == (2, 40)


def test_an_empty_shape_is_said_in_the_caption_never_a_silent_black_pane(viewer):
    path = viewer.step_flow(viewer.dataset_picture("training", 0), True, 0)
    empty = dataclasses.replace(path, silhouettes=np.zeros_like(path.silhouettes))
    caption = viewer.step_panes(empty, path.steps)[3]
    assert "The decoded shape is empty at this step" in caption and "try another seed" in caption
    full = dataclasses.replace(path, silhouettes=np.ones_like(path.silhouettes))
    assert "empty" not in viewer.step_panes(full, 0)[3]


def test_the_page_turns_every_failure_into_a_message_and_logs_it(capsys):
    """Expected refusals: one log line; out of memory: says so; a bug: a named message, traceback
    in the log. Never an empty message."""
    import gradio as gr

    from flowsdf.viewer.app import _shown

    def fails(error):
        @_shown
        def handler():
            raise error
        return handler

    for error, shown, logged in [
        (FlowSDFError("notes.png: not a picture"), "notes.png: not a picture", "refused: notes.png: not a picture"),
        (torch.OutOfMemoryError("CUDA out of memory"), "out of memory", "out of memory: handler"),
        (MemoryError(), "out of memory", "out of memory: handler"),
        (ZeroDivisionError("division by zero"), "internal error (ZeroDivisionError: division by zero)",
         "internal error: handler: ZeroDivisionError"),
    ]:
        with pytest.raises(gr.Error) as caught:
            fails(error)()
        assert shown in caught.value.message and caught.value.message.strip()
        assert caught.value.print_exception is False  # Gradio does not print its own traceback
        err = capsys.readouterr().err
        assert logged in err
        assert ("Traceback" in err) == isinstance(error, ZeroDivisionError), err
        if not isinstance(error, ZeroDivisionError):
            assert len(err.strip().splitlines()) == 1
    with pytest.raises(gr.Error, match="&lt;b&gt;"):  # a message is text, not HTML
        fails(FlowSDFError("<b>name</b>.png: bad"))()


def test_a_shape_without_a_surface_is_a_message_never_a_black_result(viewer, data, tmp_path):
    """The tiny run's decoder has no surface after two epochs (conftest): the request says so."""
    picture = tmp_path / "shape.png"
    image = data.train.input.images[0, 0]  # (3, S, S)
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(picture)
    with pytest.raises(FlowSDFError, match="no surface inside the bounding sphere: there is nothing to show"):
        viewer.reconstruct(picture, 1, 32, 0, progress=lambda f, d: None)


def test_text_to_3d_without_a_text_model_says_how_to_train_one(viewer):
    assert viewer.text is None
    with pytest.raises(FlowSDFError, match="no text model: train one with `flowsdf train --stage text"):
        viewer.generate("a box", 1, 32, 0, 1.0, progress=lambda f, d: None)


def test_text_to_3d_writes_the_mean_mesh_and_draws_each_sample(viewer, tiny_text_run):
    from flowsdf.pipeline import FlowSDF

    text = FlowSDF.from_run(tiny_text_run, "text", "cpu")
    page = Viewer(viewer.run_dir, viewer.flow, None, viewer.data, viewer.frame, Limits(), text=text)
    out = page.generate("a tall red cylinder", 3, 32, 1, 2.0, progress=lambda f, d: None)
    assert set(out.files) == {"glb", "obj", "ply"} and len(out.gallery) == 3 and out.colour_bar is not None
    shown = trimesh.load(out.files["ply"], force="mesh")
    assert len(shown.faces) > 0 and shown.visual.kind == "vertex"  # the mean, coloured by the spread
    assert [label for _, label in out.gallery] == [f"sample {k} (seed {k})" for k in (1, 2, 3)]
    assert "a tall red cylinder" in out.caption and "guidance 2" in out.caption
    for bad, words in ((dict(prompt=""), "empty"), (dict(samples=0), "samples must be from"),
                       (dict(guidance=9.0), "guidance must be from"), (dict(seed=-1), "seed must be"),
                       (dict(prompt="x" * 5000), "characters long")):
        args = {"prompt": "a box", "samples": 1, "resolution": 32, "seed": 0, "guidance": 1.0, **bad}
        with pytest.raises(FlowSDFError, match=words):
            page.generate(args["prompt"], args["samples"], args["resolution"], args["seed"], args["guidance"],
                          progress=lambda f, d: None)


def test_the_reconstruct_tabs_starting_guidance_is_the_runs_unless_the_command_says(tiny_flow_run):
    v = Viewer.load(tiny_flow_run, "cpu", progress=False)
    assert v.default_guidance == max(1.0, v.flow.cfg.flow.guidance)
    assert Viewer.load(tiny_flow_run, "cpu", progress=False, guidance=3.5).default_guidance == 3.5


def test_the_viewer_samples_at_the_temperature_the_command_gives(tiny_flow_run, data):
    images = data.heldout.input.images[:2, 0]  # (2, 3, S, S)
    hot = Viewer.load(tiny_flow_run, "cpu", progress=False, temperature=2.0)
    plain = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    at_two = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    at_two.cfg.flow.temperature = 2.0
    got = hot.flow(images, samples=2, seed=5).codes
    torch.testing.assert_close(got, at_two(images, samples=2, seed=5).codes)
    assert not torch.allclose(got, plain(images, samples=2, seed=5).codes)
