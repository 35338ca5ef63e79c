"""The joint text-image space: sticker data and metadata.jsonl, the joint tower's training, clip:PATH."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole.data import load_source
from rissole.data.stickers import EMOJI_FONT, TUXPAINT_STAMPS
from rissole.errors import DataError

transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
needs_stickers = pytest.mark.skipif(not EMOJI_FONT.is_file() or not TUXPAINT_STAMPS.is_dir(),
                                    reason="fonts-noto-color-emoji / tuxpaint-stamps-default not installed (install.sh does)")


@pytest.fixture(scope="module")
def stickers(tmp_path_factory) -> Path:
    """A real 80-image subset of the sticker dataset, written by the CLI."""
    if not EMOJI_FONT.is_file() or not TUXPAINT_STAMPS.is_dir():
        pytest.skip("fonts-noto-color-emoji / tuxpaint-stamps-default not installed (install.sh does)")
    from rissole.cli.main import main

    out = tmp_path_factory.mktemp("stk") / "stickers"
    assert main(["data", "stickers", "--out", str(out), "--limit", "80", "--seed", "3", "--val-fraction", "0.25"]) == 0
    return out


@needs_stickers
def test_stickers_subset_reads_back_through_folder_source(stickers: Path) -> None:
    recs = {s: [json.loads(line) for line in (stickers / s / "metadata.jsonl").read_text().splitlines()]
            for s in ("train", "val")}
    assert len(recs["train"]) + len(recs["val"]) == 80
    assert 8 <= len(recs["val"]) <= 35  # a 25% seeded split of 80
    sources = {r["source"] for rs in recs.values() for r in rs}
    assert sources == {"emoji", "tuxpaint"}
    for r in recs["train"] + recs["val"]:
        assert r["text"] and r["group"] and r["file_name"].endswith(".png")
    emoji = [r for r in recs["train"] if r["source"] == "emoji"]
    assert emoji and emoji[0]["group"] in {"Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                                           "Travel & Places", "Activities", "Objects", "Symbols", "Flags"}
    s = load_source(f"folder:{stickers}:train", channels=3)
    assert s.images.shape == (len(recs["train"]), 3, 32, 32) and s.images.dtype == np.uint8
    by_file = {(stickers / "train" / r["file_name"]).resolve(): r["text"] for r in recs["train"]}
    from rissole.data.folder import ImageFolder

    folder = ImageFolder(stickers, split="train")
    assert folder.captions == [by_file[f.resolve()] for f in folder.files]
    # flattened on white: the corners of every image are (near) white, and colour is kept
    corners = s.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() > 240
    assert np.abs(s.images[:, 0].astype(int) - s.images[:, 2]).mean() > 1.0  # not grey
    assert len(load_source(f"folder:{stickers}:val", channels=3).images) == len(recs["val"])


@needs_stickers
def test_stickers_refuses_a_non_empty_out_and_leaves_it(tmp_path: Path) -> None:
    from rissole.cli.main import main

    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["data", "stickers", "--out", str(tmp_path), "--limit", "4"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_malformed_metadata_line_names_file_and_line(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / name)
    meta = tmp_path / "metadata.jsonl"
    meta.write_text('{"file_name": "a.png", "text": "a red square"}\n{"file_name": "b.png", "text": oops}\n')
    with pytest.raises(DataError, match=rf"{meta}:2: expected one JSON object per line"):
        load_source(f"folder:{tmp_path}", channels=3)
    meta.write_text('{"file_name": "a.png", "text": "a red square"}\n\n["b.png"]\n')
    with pytest.raises(DataError, match=rf"{meta}:3: expected an object with a string 'file_name', found list"):
        load_source(f"folder:{tmp_path}", channels=3)
    meta.write_text('{"file_name": "b.png", "text": "second"}\n')
    s = load_source(f"folder:{tmp_path}", channels=3)
    assert s.captions == ["", "second"]  # a.png has no line: no caption


@needs_stickers
def test_joint_tower_loss_falls_and_resume_is_bit_exact(stickers: Path, tmp_path: Path) -> None:
    from rissole.embeddings.joint_train import JointTrainer, train_joint
    from rissole.models.image_tower import contrastive_loss, to_tower_input

    torch.set_num_threads(1)
    cfg = {"model": {"channels": [8, 16, 32]},
           "data": {"stickers": str(stickers), "fmnist_per_batch": 16},
           "train": {"steps": 40, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "ckpt_every": 20, "ema_decay": 0.0}}

    def fixed_batch_loss(tr: JointTrainer) -> float:
        """Loss on every training sticker with its first caption, no augmentation (same rows before / after)."""
        x = to_tower_input(tr.sticker_images)
        caps = torch.stack([c[0] for c in tr.sticker_caption_ids])
        with torch.no_grad():
            return float(contrastive_loss(tr.model.eval()(x), tr.text[caps], tr.model.logit_scale, tr.sticker_keys))

    untrained = JointTrainer(json.loads(json.dumps(cfg)), tmp_path / "probe")
    before = fixed_batch_loss(untrained)
    trained = train_joint(json.loads(json.dumps(cfg)), tmp_path / "run", progress=False)
    after = fixed_batch_loss(trained)
    assert after < 0.85 * before, (before, after)
    assert (tmp_path / "run" / "text_cache.npy").is_file()  # captions embedded once, cached

    half = train_joint(json.loads(json.dumps(cfg)), tmp_path / "resumed", stop_after=20, progress=False)
    assert half.step == 20
    resumed = train_joint(json.loads(json.dumps(cfg)), tmp_path / "resumed", resume=True, progress=False)
    for (k, a), b in zip(trained.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k

    from rissole.embeddings import make_embedder

    emb = make_embedder(f"joint:{tmp_path / 'run' / 'final'}")
    v = emb.embed_images(np.ascontiguousarray(stickers_images(stickers)))
    assert v.shape[1] == 384 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    t = emb.embed_texts(["a red apple"])
    assert t.shape == (1, 384)
    other = make_embedder(f"joint:{tmp_path / 'resumed' / 'final'}")
    assert other.spec.identity() == emb.spec.identity()  # same weights, another path: the same space


def stickers_images(stickers: Path) -> np.ndarray:
    return load_source(f"folder:{stickers}:val", channels=3).images


def test_spec_identity_separates_towers_not_paths() -> None:
    from rissole.embeddings.base import EmbeddingSpec

    a = EmbeddingSpec("joint", 1, 384, {"tower": "abc", "path": "/x"})
    assert a.identity() == EmbeddingSpec("joint", 1, 384, {"tower": "abc", "path": "/elsewhere"}).identity()
    assert a.identity() != EmbeddingSpec("joint", 1, 384, {"tower": "abd", "path": "/x"}).identity()
    assert a.identity() != EmbeddingSpec("clip", 1, 384, {"model": "abc"}).identity()


# --- clip:PATH on a tiny randomly initialised CLIP ---------------------------------------------------

def _tiny_clip(folder: Path):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from rissole.embeddings.minilm import offline_transformers

    tf = offline_transformers()
    chars = list(bytes_to_unicode().values())
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    tok = tf.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[])
    cfg = tf.CLIPConfig(
        projection_dim=16,
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                         vocab_size=len(vocab), max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"))
    torch.manual_seed(0)
    model = tf.CLIPModel(cfg).eval()
    with torch.no_grad():  # random, not default, norms and biases: a swapped weight must show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return model, tok


def _reference(model, tok, images: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory model's own embeddings (CLIP preprocessing done the documented way)."""
    import torch.nn.functional as F

    from rissole.embeddings.clip import CLIP_MEAN, CLIP_STD

    x = F.interpolate(torch.from_numpy(images).float() / 255, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        im = model.get_image_features(pixel_values=x)
        b = tok(texts, padding=True, return_tensors="pt")
        tx = model.get_text_features(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    im, tx = (o if isinstance(o, torch.Tensor) else o.pooler_output for o in (im, tx))
    unit = lambda v: (v / v.norm(dim=1, keepdim=True)).numpy()  # noqa: E731
    return unit(im), unit(tx)


def _hf_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming (what an OpenAI / open_clip checkpoint of this model holds)."""
    out = {}
    for tower, src, dst in (("v", "vision_model.encoder.layers.", "visual.transformer.resblocks."),
                            ("t", "text_model.encoder.layers.", "transformer.resblocks.")):
        ids = sorted({int(k[len(src):].split(".")[0]) for k in sd if k.startswith(src)})
        for i in ids:
            s, d = f"{src}{i}.", f"{dst}{i}."
            out[d + "attn.in_proj_weight"] = torch.cat([sd[s + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            out[d + "attn.in_proj_bias"] = torch.cat([sd[s + f"self_attn.{n}_proj.bias"] for n in "qkv"])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for w in ("weight", "bias"):
                    out[f"{d}{a}.{w}"] = sd[f"{s}{b}.{w}"]
    v, t = "vision_model.", "text_model."
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for a, b in (("visual.ln_pre", v + "pre_layrnorm"), ("visual.ln_post", v + "post_layernorm"), ("ln_final", t + "final_layer_norm")):
        for w in ("weight", "bias"):
            out[f"{a}.{w}"] = sd[f"{b}.{w}"]
    out["token_embedding.weight"] = sd[t + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[t + "embeddings.position_embedding.weight"]
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.clone() for k, v in out.items()}


def test_clip_path_round_trip_hf_folder_and_openai_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from rissole.embeddings import make_embedder

    hf = tmp_path / "hf"
    model, tok = _tiny_clip(hf)
    model.save_pretrained(str(hf))
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 28, 28), dtype=np.uint8)
    texts = ["a photo of a bag", "an ankle boot", "hi"]
    ref_im, ref_tx = _reference(model, tok, images, texts)

    emb = make_embedder(f"clip:{hf}")
    assert emb.spec.dim == 16 and emb.spec.embedder == "clip"
    np.testing.assert_allclose(emb.embed_images(images), ref_im, atol=1e-5)
    np.testing.assert_allclose(emb.embed_texts(texts), ref_tx, atol=1e-5)
    assert np.abs(ref_im[0] - ref_im[1]).max() > 1e-3  # the embeddings depend on the input

    for name in ("clip.pt", "clip.safetensors"):
        oa = tmp_path / "openai"
        oa.mkdir(exist_ok=True)
        state = _hf_to_openai(model.state_dict())
        if name.endswith(".pt"):
            torch.save(state, oa / name)
        else:
            save_file(state, str(oa / name))
        shutil.copy(hf / "tokenizer.json", oa / "tokenizer.json")
        shutil.copy(hf / "tokenizer_config.json", oa / "tokenizer_config.json")
        e2 = make_embedder(f"clip:{oa / name}")
        np.testing.assert_allclose(e2.embed_images(images), ref_im, atol=1e-5)
        np.testing.assert_allclose(e2.embed_texts(texts), ref_tx, atol=1e-5)


class Payload:
    """An object whose unpickling would run this module's code."""


def test_clip_state_dict_with_code_is_refused(tmp_path: Path) -> None:
    from rissole.embeddings.clip import ClipEmbedder
    from rissole.errors import CheckpointError

    bad = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "obj": Payload()}, bad)
    with pytest.raises(CheckpointError, match="cannot be loaded with weights_only=True"):
        ClipEmbedder(bad)


def test_embed_text_cli_minilm_is_unit_and_semantic(tmp_path: Path) -> None:
    from rissole.cli.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handbag\na red apple\n")
    out = tmp_path / "t.npy"
    assert main(["embed", "--embedder", "minilm", "--text", "a photo of a bag", f"@{prompts}", "--out", str(out)]) == 0
    v = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["texts"] == ["a photo of a bag", "a handbag", "a red apple"] and meta["embedding"]["embedder"] == "minilm"
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # mean pooling over the mask: a bag is nearer a handbag than an apple
    assert main(["embed", "--embedder", "vq", "--text", "hi", "--out", str(tmp_path / "x.npy")]) == 2


def test_fmnist_captioned_folder(tmp_path: Path) -> None:
    from rissole.cli.main import main
    from rissole.data import load_fashion_mnist
    from rissole.data.fashion_mnist import CAPTION_NAMES

    out = tmp_path / "fm"
    assert main(["data", "fmnist", "--out", str(out), "--limit", "12"]) == 0
    images, labels = load_fashion_mnist("test")
    s = load_source(f"folder:{out}:test", channels=3)
    recs = [json.loads(line) for line in (out / "test" / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and len(s.images) == 12
    for r in recs:  # file order differs from the idx order: match by the row number in the name
        i = int(Path(r["file_name"]).stem)
        assert r["label"] == labels[i] and r["text"] == f"a photo of a {CAPTION_NAMES[labels[i]]}"
    first = next(k for k, f in enumerate(sorted((out / "test").rglob("*.png"))) if f.stem == "00000")
    assert np.array_equal(s.images[first], np.repeat(images[0], 3, axis=0))  # grey copied into R, G, B unchanged
