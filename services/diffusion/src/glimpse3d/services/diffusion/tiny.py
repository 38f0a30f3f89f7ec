"""Tiny random stand-ins for the diffusion models, written in the production on-disk layout.

:func:`write_tiny_models` saves diffusers' own fast-test components for the SDXL ControlNet img2img
pipeline, seeded, where :mod:`glimpse3d.services.diffusion.weights` expects the production files,
with real small-vocabulary CLIP tokenizers (no download) and non-zero ControlNet output convolutions
(so that the depth condition reaches the UNet). For tests and benchmarks only: outputs are
noise-like. See docs/backends/diffusion.md ("Models").
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from glimpse3d.core.models import offline_hub
from glimpse3d.services.diffusion.weights import CONTROLNET_DEPTH, SDXL_BASE, VAE_FP16_FIX, WEIGHTS_VARIANT

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TEXT_VOCAB_SIZE = 1000  # embedding rows of the tiny text encoders (more than the tokenizer needs)
# Words that get whole-word merges, so that common prompt words become single tokens as in CLIP.
MERGE_WORDS = ("a", "the", "of", "photo", "object", "detailed", "high", "quality", "sharp", "blurry", "render")


# --------------------------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------------------------- #


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2 / CLIP): printable Latin-1 bytes map to
    themselves, the others to code points from 256 upwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right merges that turn each word into one end-of-word token (``photo</w>``)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def write_clip_tokenizer(folder: Path, pad_token: str) -> int:
    """Write a CLIP tokenizer folder (the published four files); returns its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    merges = word_merges(MERGE_WORDS)
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


# --------------------------------------------------------------------------------------------- #
# Components
# --------------------------------------------------------------------------------------------- #

# UNet / ControlNet shared by diffusers' SDXL ControlNet fast tests: two blocks, SDXL "text_time"
# added conditioning (6 size/crop ids x 8 + the 32-d pooled text embedding = 80).
_UNET_COMMON: dict[str, Any] = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,
    cross_attention_dim=64,
)


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **_UNET_COMMON, sample_size=32, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")
    )


def _controlnet(seed: int):
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel(**_UNET_COMMON, conditioning_embedding_out_channels=(16, 32))
    gen = torch.Generator().manual_seed(seed)
    zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return net


def _vae(force_upcast: bool):
    from diffusers import AutoencoderKL

    # diffusers annotates the three per-block tuples as 1-tuples (tuple[int], tuple[str]).
    return AutoencoderKL(
        block_out_channels=(32, 64),  # pyright: ignore[reportArgumentType]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        sample_size=32,
        scaling_factor=0.13025,  # SDXL's latent scale
        force_upcast=force_upcast,
    )


def _text_config(tokenizer_dir: Path):
    from transformers import CLIPTextConfig

    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    return CLIPTextConfig(
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=32,
    )


# --------------------------------------------------------------------------------------------- #
# Writers
# --------------------------------------------------------------------------------------------- #


def _write_base(root: Path, seed: int) -> None:
    """The SDXL base pipeline folder: model_index.json, fp16 variant weights, tokenizers."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    staging = root.parent / f".{root.name}.tokenizers"
    write_clip_tokenizer(staging / "tokenizer", pad_token=EOS)
    write_clip_tokenizer(staging / "tokenizer_2", pad_token="!")  # SDXL's second tokenizer pads with "!"
    torch.manual_seed(seed)
    unet = _unet()
    torch.manual_seed(seed + 1)
    vae = _vae(force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(staging / "tokenizer"))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(staging / "tokenizer"))
    scheduler = EulerDiscreteScheduler(  # SDXL base's scheduler settings
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(staging / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(staging / "tokenizer_2"),
        unet=unet, force_zeros_for_empty_prompt=True, add_watermarker=False,
        scheduler=scheduler,  # pyright: ignore[reportArgumentType]  # diffusers annotates it as the names enum
    )
    pipe.to(torch.float16).save_pretrained(root, variant=WEIGHTS_VARIANT, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):  # the published four files, not this library version's format
        shutil.rmtree(root / name)
        shutil.copytree(staging / name, root / name)
    shutil.rmtree(staging)
    index_path = root / "model_index.json"  # the published index lists no absent optional components
    index = {k: v for k, v in json.loads(index_path.read_text()).items() if v != [None, None]}
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def _write_controlnet(root: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    net = _controlnet(seed)
    # diffusers' ModelMixin.to is @wraps(torch.nn.Module.to), which pyright reads as the unbound function.
    net.to(torch.float16).save_pretrained(  # pyright: ignore[reportArgumentType]
        root, variant=WEIGHTS_VARIANT, safe_serialization=True)


def _write_vae_fix(root: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    _vae(force_upcast=False).save_pretrained(root, safe_serialization=True)  # published in float32, no variant


def write_tiny_models(model_dir: Path, seed: int = 0) -> list[str]:
    """Write tiny random ``diffusion/*`` models into ``model_dir``; returns the model names written."""
    offline_hub()
    model_dir = Path(model_dir)
    writers = ((SDXL_BASE, _write_base, 0), (CONTROLNET_DEPTH, _write_controlnet, 10),
               (VAE_FP16_FIX, _write_vae_fix, 20))
    for name, writer, offset in writers:
        root = model_dir / name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        writer(root, seed + offset)
        log.info("tiny model written", extra={"model": name, "path": str(root)})
    return [name for name, _, _ in writers]
