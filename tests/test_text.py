import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowsdf.data import captions, shapes
from flowsdf.errors import FlowSDFError
from flowsdf.text.encoder import (
    CLIPTextEncoder,
    SmallTextEncoder,
    TextConfig,
    build_text_encoder,
    pooled,
)
from flowsdf.text.tokenizer import (
    END,
    PAD,
    START,
    UNK,
    WordTokenizer,
    caption_tokenizer,
    split_words,
)


def tiny_tokenizer(max_length: int = 12) -> WordTokenizer:
    return WordTokenizer.from_texts(["a tall red cylinder", "a flat blue box, with a hole"], max_length)


# ---------------------------------------------------------------------------------------------
# tokenizer


def test_split_words_lower_cases_and_splits_punctuation():
    assert split_words("A Tall, red  cylinder!") == ["a", "tall", ",", "red", "cylinder", "!"]
    assert split_words("box-shaped") == ["box", "-", "shaped"]


def test_round_trip_and_mask():
    tok = tiny_tokenizer()
    ids, mask = tok.encode(["A tall red cylinder", "a flat blue box, with a hole"])
    assert ids.shape == mask.shape == (2, 12) and mask.dtype == torch.bool
    assert tok.decode(ids) == ["a tall red cylinder", "a flat blue box , with a hole"]
    assert mask.sum(1).tolist() == [4 + 2, 8 + 2]
    assert (ids[:, 0] == tok.stoi[START]).all()
    assert ids[0, 5] == tok.stoi[END] and (ids[0, 6:] == tok.stoi[PAD]).all() and not mask[0, 6:].any()


def test_unknown_and_non_ascii_words_become_unk_with_one_warning(capsys):
    tok = tiny_tokenizer()
    ids, mask = tok.encode(["a purple cylinder", "a café 🙂 日本語 ñ box"])
    assert ids[0, 2] == tok.stoi[UNK] and ids[0, 3] == tok.stoi["cylinder"]
    assert mask[1].sum() == 6 + 2 and (ids[1, 2:6] == tok.stoi[UNK]).all() and ids[1, 6] == tok.stoi["box"]
    assert tok.decode(ids)[1] == " ".join(["a", *[UNK] * 4, "box"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "5 word(s) the model does not know" in err and "'purple'" in err


def test_a_prompt_without_a_known_word_is_one_error():
    tok = tiny_tokenizer()
    with pytest.raises(FlowSDFError, match="^prompt 1: none of its words is one the model knows"):
        tok.encode(["a box", "café 🙂 日本語"])


def test_long_prompt_is_cut_with_one_warning(capsys):
    tok = tiny_tokenizer(max_length=8)
    ids, mask = tok.encode(["red " * 10_000, "a box"])
    assert ids.shape == (2, 8) and mask[0].all()
    assert ids[0, -1] == tok.stoi[END] and (ids[0, 1:-1] == tok.stoi["red"]).all()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut" in err


@pytest.mark.parametrize("bad", [[""], ["a box", "   "], [], "a box", [3]])
def test_bad_prompts_are_one_error_line(bad):
    with pytest.raises(FlowSDFError) as e:
        tiny_tokenizer().encode(bad)
    assert "\n" not in str(e.value)


def test_to_dict_round_trip_through_json_and_damage():
    tok = tiny_tokenizer()
    back = WordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    texts = ["a tall blue box with a hole", "a box with an unknown word"]
    assert all(torch.equal(x, y) for x, y in zip(tok.encode(texts), back.encode(texts)))
    assert back.max_length == tok.max_length
    for damaged in [{"kind": "bpe"}, {**tok.to_dict(), "vocab": ["a", "b"]}, {**tok.to_dict(), "max_length": "8"}, []]:
        with pytest.raises(FlowSDFError):
            WordTokenizer.from_dict(damaged)


def test_caption_tokenizer_knows_every_caption_word():
    tok = caption_tokenizer()
    specs = shapes.random_shapes(150, 2)
    albedos = np.random.default_rng(2).uniform(0.35, 1.0, (150, 3))
    split = captions.split_captions(specs, albedos, n=4)
    texts = [c for part in (split.train, split.heldout_templates, split.unseen) for cs in part for c in cs]
    ids, mask = tok.encode(texts)
    assert not (ids == tok.stoi[UNK]).any()
    assert not mask[:, -1].any()  # every caption fits with room to spare


# ---------------------------------------------------------------------------------------------
# small encoder


@pytest.fixture(scope="module")
def small() -> SmallTextEncoder:
    torch.manual_seed(0)
    return SmallTextEncoder(TextConfig(width=32, depth=2, heads=4, max_length=12), tiny_tokenizer()).eval()


def test_small_encoder_shapes(small):
    tokens, mask = small.encode(["a tall red cylinder", "a box"])
    assert tokens.shape == (2, 12, 32) and mask.shape == (2, 12)
    assert torch.isfinite(tokens).all()
    assert (tokens[~mask] == 0).all()  # padding positions are zero
    assert pooled(tokens, mask).shape == (2, 32)
    assert small.width == 32


def test_padding_does_not_change_the_real_tokens(small):
    ids, mask = small.tokenizer.encode(["a tall red cylinder", "a box"])
    ref = small(ids, mask)
    noisy = torch.where(mask, ids, torch.randint(0, small.tokenizer.vocab_size, ids.shape))
    assert not torch.equal(noisy, ids)
    out = small(noisy, mask)
    assert torch.allclose(out[mask], ref[mask], atol=1e-6)
    short = small(ids[:, :6], mask[:, :6])  # less padding: the same real tokens
    assert torch.allclose(short[mask[:, :6]], ref[:, :6][mask[:, :6]], atol=1e-6)
    # and the mask is what does it: attending to the padding changes the real tokens
    unmasked = small(noisy, torch.ones_like(mask))
    assert not torch.allclose(unmasked[mask], ref[mask], atol=1e-3)
    # a prompt alone and in a batch with a longer one encodes the same
    alone, _ = small.encode(["a box"])
    assert torch.allclose(alone[0], ref[1], atol=1e-6)


def test_small_encoder_trains():
    torch.manual_seed(0)
    enc = build_text_encoder(TextConfig(width=32, depth=1, heads=2))
    tokens, mask = enc.encode(["a tall red cylinder"])
    pooled(tokens, mask).pow(2).sum().backward()
    assert enc.token_embed.weight.grad.abs().sum() > 0 and enc.pos_embed.grad.abs().sum() > 0
    assert enc.tokenizer.vocab_size == caption_tokenizer().vocab_size


def test_text_config_checks():
    from flowsdf import config as config_mod
    from flowsdf import overrides

    with pytest.raises(FlowSDFError, match="text.kind"):
        overrides.apply(config_mod.preset("tiny"), ["text.kind=bert"])
    with pytest.raises(FlowSDFError, match="text.width"):
        overrides.apply(config_mod.preset("tiny"), ["text.width=30", "text.heads=4"])
    with pytest.raises(FlowSDFError, match="text.clip_path"):
        overrides.apply(config_mod.preset("tiny"), ["text.kind=clip"])
    with pytest.raises(FlowSDFError):
        SmallTextEncoder(TextConfig(max_length=8), tiny_tokenizer(max_length=12))


def test_importing_the_encoders_does_not_import_transformers():
    code = "import sys, flowsdf.text.encoder; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# CLIP, from a tiny random model and tokenizer written here: no download, no network


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("a test tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _tiny_clip_tokenizer(folder):
    """A byte-level BPE vocabulary like CLIP's: 256 byte symbols, the same with the end-of-word
    mark, two merges, and the special tokens at CLIP's own ids 49406 / 49407."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    merges = [("r", "e"), ("re", "d</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(folder)


TEXT = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 49407}


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """(text-only folder, whole CLIP folder, the whole model) with random weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("clip")
    tok = _tiny_clip_tokenizer(root / "tokenizer_src")
    text_dir, full_dir = root / "text", root / "full"
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)).save_pretrained(text_dir)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    full = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=16))
    full.save_pretrained(full_dir)
    for d in (text_dir, full_dir):
        tok.save_pretrained(d)
    return text_dir, full_dir, full.eval()


def test_clip_encoder_loads_offline_and_encodes(clip_dirs, no_network):
    enc = CLIPTextEncoder(clip_dirs[0])
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tokens, mask = enc.encode(["a tall red cylinder", "café 🙂 日本"])
    assert tokens.shape == (2, 77, 32) and mask.shape == (2, 77) and mask.dtype == torch.bool
    ids = enc.tokenizer(["a tall red cylinder"])["input_ids"][0]
    assert ids[0] == 49406 and ids[-1] == 49407 and int(mask[0].sum()) == len(ids)
    assert int(mask[1].sum()) > 2  # non-ASCII text became byte tokens, not an error
    assert enc.width == 32 and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training  # frozen: stays in eval mode


def test_clip_whole_model_folder_gives_its_text_half(clip_dirs, no_network):
    _, full_dir, full = clip_dirs
    enc = build_text_encoder(TextConfig(kind="clip", clip_path=str(full_dir)))
    tokens, _ = enc.encode(["a red box"])
    batch = enc.tokenizer(["a red box"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        ref = full.text_model(**batch).last_hidden_state
    assert torch.allclose(tokens, ref, atol=1e-5)


def test_clip_prompts_empty_and_long(clip_dirs, no_network, capsys):
    enc = CLIPTextEncoder(clip_dirs[0])
    with pytest.raises(FlowSDFError):
        enc.encode([""])
    tokens, mask = enc.encode(["red " * 10_000, "a box"])
    assert tokens.shape == (2, 77, 32) and mask[0].all() and not mask[1].all()
    assert "cut" in capsys.readouterr().err


def test_clip_bad_folders_are_one_error_line(tmp_path, clip_dirs, no_network):
    def copy(name: str):
        folder = tmp_path / name
        folder.mkdir()
        for f in os.listdir(clip_dirs[0]):
            (folder / f).write_bytes((clip_dirs[0] / f).read_bytes())
        return folder

    not_clip = copy("bert")
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = copy("no_weights")
    (no_weights / "model.safetensors").unlink()
    broken = copy("broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    deeper = copy("deeper")  # its config asks for a layer its weights lack: never random weights
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    cases = [(tmp_path / "missing", "not a folder"), ("", "no folder"), (no_weights, "weights"),
             (not_clip, "not CLIP"), (broken, "cannot load"), (deeper, "text-model weights")]
    for path, words in cases:
        with pytest.raises(FlowSDFError) as e:
            CLIPTextEncoder(path)
        message = str(e.value)
        assert "\n" not in message and words in message
        assert "openai/clip-vit-base-patch32" in message  # says where to get one
