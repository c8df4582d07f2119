"""DINOv2 conditioner: every file layout loads the same tiny random model, errors are one line, no network."""

import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flowsdf.errors import FlowSDFError
from flowsdf.models.dinov2 import DINOv2Conditioner, DINOv2Config, encode_in_batches

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file

OURS = DINOv2Config(hidden_size=32, num_layers=2, num_heads=2)
LEGACY = (  # the names the hub's checkpoints use; newer transformers may report the others
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def hf_legacy_state(model) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        for old, new in LEGACY:
            key = key.replace(new, old)
        out[key] = value.detach().clone()
    return out


def meta_state(hf: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Meta's layout written out by hand from Meta's module names (facebookresearch/dinov2)."""
    meta = {
        "cls_token": hf["embeddings.cls_token"],
        "mask_token": hf["embeddings.mask_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(layers):
        h, m = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            meta[m + "attn.qkv." + kind] = torch.cat(
                [hf[h + f"attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            )  # Meta stacks q, k, v along the output dimension
            meta[m + "attn.proj." + kind] = hf[h + "attention.output.dense." + kind]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                meta[m + f"{n}.{kind}"] = hf[h + f"{n}.{kind}"]
        meta[m + "ls1.gamma"] = hf[h + "layer_scale1.lambda1"]
        meta[m + "ls2.gamma"] = hf[h + "layer_scale2.lambda1"]
    return meta


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random DINOv2 (width 32, 2 layers, 4x4 position grid) saved in every layout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dinov2")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56
    )
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():  # distinct values everywhere, so any swapped tensor changes the tokens
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p) + 0.05 * torch.rand(()))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(root / "hf")
    hf_logging.enable_progress_bar()
    hf = hf_legacy_state(model)
    meta = meta_state(hf, 2)
    torch.save(meta, root / "meta.pth")
    save_file({k: v.contiguous() for k, v in meta.items()}, root / "meta.safetensors")
    save_file({k: v.contiguous() for k, v in hf.items()}, root / "hf.safetensors")
    torch.set_num_threads(threads)
    return root, model, meta


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (and is recorded)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test: network access to {address} attempted")

    def refuse_lookup(host, *args, **kwargs):  # name lookup comes first, so it is watched too
        attempts.append(host)
        raise OSError(f"test: network lookup of {host} attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield attempts
    assert attempts == []


def reference_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """The preprocessing written out independently: bicubic to 224, ImageNet mean/std."""
    x = F.interpolate(images, size=(224, 224), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state


def test_every_layout_loads_the_same_model(files, no_network):
    root, model, _ = files
    images = torch.rand(2, 3, 64, 64)
    expected = reference_tokens(model, images)
    assert expected.shape == (2, 1 + 16 * 16, 32)
    for name in ("hf", "meta.pth", "meta.safetensors", "hf.safetensors"):
        tokens = DINOv2Conditioner(root / name, OURS)(images)
        assert tokens.shape == (2, 257, 32), name
        assert torch.allclose(tokens, expected, atol=1e-5), name


def test_meta_mapping_is_not_symmetric_in_query_and_key(files):
    # Swapping Meta's q and k thirds must change the tokens (the mapping really reads the order).
    root, model, meta = files
    swapped = dict(meta)
    for i in range(2):
        q, k, v = meta[f"blocks.{i}.attn.qkv.weight"].chunk(3)
        swapped[f"blocks.{i}.attn.qkv.weight"] = torch.cat([k, q, v])
    torch.save(swapped, root / "swapped.pth")
    images = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(DINOv2Conditioner(root / "swapped.pth", OURS)(images),
                              reference_tokens(model, images), atol=1e-3)


def one_line_error(weights, config=OURS) -> str:
    with pytest.raises(FlowSDFError) as info:
        DINOv2Conditioner(weights, config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_is_one_line_saying_where_to_get_it(tmp_path, no_network):
    message = one_line_error(tmp_path / "dinov2_vits14_pretrain.pth")
    assert "not found" in message and "facebook/dinov2-small" in message and "facebookresearch/dinov2" in message
    assert "width 32" in message  # what was expected


def test_wrong_keys_shapes_and_garbage_are_one_line(files, tmp_path, no_network):
    root, _, meta = files
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    assert "neither Meta's keys" in one_line_error(tmp_path / "other.pth")
    partial = {k: v.contiguous() for k, v in meta.items() if k != "blocks.1.ls2.gamma"}
    save_file(partial, tmp_path / "partial.safetensors")
    assert "layer_scale2" in one_line_error(tmp_path / "partial.safetensors")
    wider = DINOv2Config(hidden_size=48, num_layers=2, num_heads=2)
    assert "expected (1, 1, 48)" in one_line_error(root / "meta.pth", wider)
    deeper = DINOv2Config(hidden_size=32, num_layers=3, num_heads=2)
    assert "lacks" in one_line_error(root / "meta.safetensors", deeper)
    assert "3 layers" in one_line_error(root / "hf", deeper)  # a folder is checked against the config too
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    assert "cannot be read" in one_line_error(tmp_path / "garbage.pth")
    (tmp_path / "empty_folder").mkdir()
    assert "Hugging Face folder" in one_line_error(tmp_path / "empty_folder")
    torch.save({"x": torch.zeros(1)}, tmp_path / "weights.ckpt")
    assert "unknown file type" in one_line_error(tmp_path / "weights.ckpt")


def test_a_folder_whose_weights_do_not_fit_is_one_line_not_random_weights(files, tmp_path, no_network):
    root, model, _ = files
    hf = hf_legacy_state(model)
    for name, change in (("short", lambda s: s.pop("encoder.layer.1.norm2.bias")),
                         ("wide", lambda s: s.update({"embeddings.cls_token": torch.zeros(1, 1, 48)}))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((root / "hf" / "config.json").read_text())
        state = dict(hf)
        change(state)
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", {"format": "pt"})
        message = one_line_error(folder)
        assert ("norm2" in message and "lacks" in message) if name == "short" else "(1, 1, 48)" in message


def test_frozen_and_stays_in_eval_mode(files):
    root, _, _ = files
    enc = DINOv2Conditioner(root / "meta.safetensors", OURS)
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.model.training
    assert not any(m.training for m in enc.model.modules())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert enc(images).grad_fn is None


def test_encode_in_batches_matches_one_call(files):
    root, _, _ = files
    enc = DINOv2Conditioner(root / "meta.pth", OURS)
    images = torch.rand(5, 3, 32, 32)
    cached = encode_in_batches(enc, images, batch_size=2)
    assert cached.shape == (5, 257, 32)
    assert torch.allclose(cached, enc(images), atol=1e-5)
    assert encode_in_batches(enc, images, batch_size=2, dtype=torch.float16).dtype == torch.float16


def test_importing_the_module_does_not_import_transformers():
    code = "import sys, flowsdf.models.dinov2; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 0
