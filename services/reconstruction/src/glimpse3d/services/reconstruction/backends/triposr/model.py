"""The TripoSR network (Tochilkin et al. 2024), module for module as published, and its config.

One 512 px photo -> a triplane NeRF: a DINO ViT-B/16 image tokenizer (position embeddings resized
with the transformers 4.x rule the model was trained with, :func:`legacy_interpolate_pos_encoding`),
learned triplane tokens, a 16-block transformer backbone cross-attending to the image, a transposed
convolution to the [3, 40, 64, 64] scene code, and a NeRF MLP decoding (density, colour) at points
sampled bilinearly from the three planes.

Module and parameter names reproduce the published checkpoint's keys (transformers 5's ViT naming
is mapped in :mod:`.checkpoint`). ``config.yaml`` is read with PyYAML, its ``${a.b}``
interpolations resolved here; every ``*_cls`` entry must name the published class implemented here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional

from glimpse3d.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers.models.vit.modeling_vit import ViTEmbeddings

# The ``facebook/dino-vitb16`` config.json, as published (transformers ViTConfig fields).
DINO_VITB16_CONFIG: dict[str, Any] = {
    "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 768,
    "image_size": 224,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "num_hidden_layers": 12,
    "patch_size": 16,
    "qkv_bias": True,
}
KNOWN_VIT_CONFIGS: dict[str, dict[str, Any]] = {"facebook/dino-vitb16": DINO_VITB16_CONFIG}

# The classes config.yaml names; this module implements exactly these.
PUBLISHED_CLASSES: dict[str, str] = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}

# The hyper-parameters of the published config.yaml (same structure, same interpolation).
PUBLISHED_CONFIG: dict[str, Any] = {
    "cond_image_size": 512,
    "image_tokenizer_cls": PUBLISHED_CLASSES["image_tokenizer_cls"],
    "image_tokenizer": {"pretrained_model_name_or_path": "facebook/dino-vitb16"},
    "tokenizer_cls": PUBLISHED_CLASSES["tokenizer_cls"],
    "tokenizer": {"plane_size": 32, "num_channels": 1024},
    "backbone_cls": PUBLISHED_CLASSES["backbone_cls"],
    "backbone": {"in_channels": "${tokenizer.num_channels}", "num_attention_heads": 16, "attention_head_dim": 64,
                 "num_layers": 16, "cross_attention_dim": 768},
    "post_processor_cls": PUBLISHED_CLASSES["post_processor_cls"],
    "post_processor": {"in_channels": 1024, "out_channels": 40},
    "decoder_cls": PUBLISHED_CLASSES["decoder_cls"],
    "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
    "renderer_cls": PUBLISHED_CLASSES["renderer_cls"],
    "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp", "density_bias": -1.0,
                 "num_samples_per_ray": 128},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}
_DENSITY_ACTIVATIONS = {"exp": torch.exp, "softplus": functional.softplus, "relu": functional.relu, "none": lambda x: x}
_REQUIRED = object()


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BackboneConfig:
    in_channels: int
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    cross_attention_dim: int
    norm_num_groups: int = 32
    attention_bias: bool = False
    activation_fn: str = "geglu"

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass(frozen=True)
class DecoderConfig:
    in_channels: int
    n_neurons: int
    n_hidden_layers: int
    activation: str = "relu"
    bias: bool = True


@dataclass(frozen=True)
class RendererConfig:
    radius: float
    feature_reduction: str = "concat"
    density_activation: str = "exp"
    density_bias: float = -1.0
    color_activation: str = "sigmoid"
    num_samples_per_ray: int = 128


@dataclass(frozen=True)
class TripoSRConfig:
    """The parsed config.yaml (``vit`` holds the image encoder's ViTConfig fields)."""

    cond_image_size: int
    vit_name: str
    vit: Mapping[str, Any]
    plane_size: int
    num_channels: int
    backbone: BackboneConfig
    upsample_in_channels: int
    triplane_channels: int
    decoder: DecoderConfig
    renderer: RendererConfig

    @property
    def triplane_size(self) -> int:
        return 2 * self.plane_size


def _bad(message: str, key: str) -> FailedPrecondition:
    return FailedPrecondition(f"triposr config.yaml: {message}", field=f"config.yaml:{key}")


def resolve_interpolations(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with every ``"${a.b}"`` value replaced by the value at path ``a.b``."""
    pattern = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")

    def lookup(path: str, depth: int) -> Any:
        node: Any = raw
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise _bad(f"interpolation ${{{path}}} names no value", path)
            node = node[part]
        return resolve(node, path, depth + 1)

    def resolve(value: Any, key: str, depth: int) -> Any:
        if depth > 16:
            raise _bad("interpolations nest too deeply (a cycle?)", key)
        if isinstance(value, Mapping):
            return {k: resolve(v, f"{key}.{k}" if key else str(k), depth) for k, v in value.items()}
        if isinstance(value, str) and "${" in value:
            match = pattern.match(value.strip())
            if match is None:
                raise _bad(f"only whole-value interpolations are supported, got {value!r}", key)
            return lookup(match.group(1), depth)
        return value

    return resolve(raw, "", 0)


def _section(raw: Mapping[str, Any], name: str, spec: Mapping[str, tuple[type, Any]]) -> dict[str, Any]:
    """Values of section ``name`` typed by ``spec`` (key -> (type, default or _REQUIRED)); unknown keys fail."""
    section = raw.get(name)
    if not isinstance(section, Mapping):
        raise _bad(f"section {name!r} is missing or not a mapping", name)
    unknown = sorted(set(section) - set(spec))
    if unknown:
        raise _bad(f"unsupported key(s) in {name}: {', '.join(map(str, unknown))}", f"{name}.{unknown[0]}")
    out: dict[str, Any] = {}
    for key, (kind, default) in spec.items():
        value = section.get(key, default)
        if value is _REQUIRED:
            raise _bad(f"{name}.{key} is required", f"{name}.{key}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise _bad(f"{name}.{key} must be {kind.__name__}, got {value!r}", f"{name}.{key}")
        out[key] = value
    return out


_VIT_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
             "patch_size")
_VIT_FLOATS = ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")


def _vit_config(section: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The image encoder's ViTConfig fields: ``vit_config`` given inline (tiny test models), else the
    built-in copy of the named published config (``facebook/dino-vitb16``)."""
    name = section["pretrained_model_name_or_path"]
    inline = section.get("vit_config")
    if inline is None:
        if name not in KNOWN_VIT_CONFIGS:
            raise _bad(f"unknown image encoder {name!r}; known: {', '.join(KNOWN_VIT_CONFIGS)} "
                       "(or give vit_config inline)", "image_tokenizer.pretrained_model_name_or_path")
        return name, dict(KNOWN_VIT_CONFIGS[name])
    vit = dict(inline)
    for key in _VIT_INTS:
        value = vit.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"image_tokenizer.vit_config.{key} must be a positive integer, got {value!r}",
                       f"image_tokenizer.vit_config.{key}")
    for key in _VIT_FLOATS:
        value = vit.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"image_tokenizer.vit_config.{key} must be a number, got {value!r}",
                       f"image_tokenizer.vit_config.{key}")
        if key in vit:
            vit[key] = float(value)
    return name, vit


def parse_config(raw: Mapping[str, Any]) -> TripoSRConfig:
    """Validate a loaded config.yaml mapping (interpolations resolved here) into a :class:`TripoSRConfig`."""
    if not isinstance(raw, Mapping):
        raise _bad("the file must hold a mapping", "")
    raw = resolve_interpolations(raw)
    for key, cls in PUBLISHED_CLASSES.items():
        if raw.get(key) != cls:
            raise _bad(f"{key} must be {cls!r} (the class this backend implements), got {raw.get(key)!r}", key)
    size = raw.get("cond_image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 2048:
        raise _bad(f"cond_image_size must be an integer in 16..2048, got {size!r}", "cond_image_size")
    image = _section(raw, "image_tokenizer", {"pretrained_model_name_or_path": (str, _REQUIRED),
                                              "enable_gradient_checkpointing": (bool, False),
                                              "vit_config": (dict, None)})
    vit_name, vit = _vit_config(image)
    tok = _section(raw, "tokenizer", {"plane_size": (int, _REQUIRED), "num_channels": (int, _REQUIRED)})
    backbone = BackboneConfig(**_section(raw, "backbone", {
        "in_channels": (int, _REQUIRED), "num_attention_heads": (int, 16), "attention_head_dim": (int, 88),
        "num_layers": (int, 1), "cross_attention_dim": (int, _REQUIRED), "norm_num_groups": (int, 32),
        "attention_bias": (bool, False), "activation_fn": (str, "geglu")}))
    post = _section(raw, "post_processor", {"in_channels": (int, _REQUIRED), "out_channels": (int, _REQUIRED)})
    decoder = DecoderConfig(**_section(raw, "decoder", {
        "in_channels": (int, _REQUIRED), "n_neurons": (int, _REQUIRED), "n_hidden_layers": (int, _REQUIRED),
        "activation": (str, "relu"), "bias": (bool, True)}))
    renderer = RendererConfig(**_section(raw, "renderer", {
        "radius": (float, _REQUIRED), "feature_reduction": (str, "concat"), "density_activation": (str, "exp"),
        "density_bias": (float, -1.0), "color_activation": (str, "sigmoid"), "num_samples_per_ray": (int, 128)}))
    config = TripoSRConfig(size, vit_name, vit, tok["plane_size"], tok["num_channels"], backbone,
                           post["in_channels"], post["out_channels"], decoder, renderer)
    _check_consistent(config)
    return config


def _check_consistent(c: TripoSRConfig) -> None:
    """The sizes must chain: tokens -> backbone -> upsampler -> decoder, and the activations be known."""
    checks = [
        (c.backbone.in_channels == c.num_channels, "backbone.in_channels must equal tokenizer.num_channels"),
        (c.upsample_in_channels == c.num_channels, "post_processor.in_channels must equal tokenizer.num_channels"),
        (c.backbone.cross_attention_dim == c.vit.get("hidden_size"),
         "backbone.cross_attention_dim must equal the image encoder's hidden_size"),
        (c.num_channels % c.backbone.norm_num_groups == 0, "tokenizer.num_channels must divide into norm_num_groups"),
        (c.renderer.feature_reduction in ("concat", "mean"), "renderer.feature_reduction must be concat or mean"),
        (c.decoder.in_channels == c.triplane_channels * (3 if c.renderer.feature_reduction == "concat" else 1),
         "decoder.in_channels must be 3 x post_processor.out_channels (concat) or equal to it (mean)"),
        (c.decoder.activation in _ACTIVATIONS, f"decoder.activation must be one of {sorted(_ACTIVATIONS)}"),
        (c.renderer.density_activation in _DENSITY_ACTIVATIONS,
         f"renderer.density_activation must be one of {sorted(_DENSITY_ACTIVATIONS)}"),
        (c.renderer.color_activation == "sigmoid", "renderer.color_activation must be sigmoid"),
        (c.backbone.activation_fn in _FEED_FORWARD, f"backbone.activation_fn must be one of {sorted(_FEED_FORWARD)}"),
        (c.renderer.radius > 0, "renderer.radius must be positive"),
        (min(c.plane_size, c.num_channels, c.triplane_channels, c.decoder.n_neurons, c.decoder.n_hidden_layers,
             c.backbone.num_layers, c.backbone.num_attention_heads, c.backbone.attention_head_dim) >= 1,
         "sizes must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise _bad(message, message.split(" ")[0])


def load_config(path: Path) -> TripoSRConfig:
    """Read and validate ``config.yaml``."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise FailedPrecondition(f"cannot read triposr config {path}: {err}", field="config.yaml") from err
    return parse_config(raw)


# ----------------------------------------------------------------------------- image tokenizer


def legacy_interpolate_pos_encoding(position_embeddings: Tensor, height: int, width: int, patch_size: int) -> Tensor:
    """[1, 1 + n^2, D] ViT position table -> [1, 1 + (height/p)(width/p), D] by the transformers 4.x rule:
    bicubic with ``scale_factor = (height // p + 0.1) / n`` (DINO's guard against rounding down)."""
    num_positions = position_embeddings.shape[1] - 1
    side = math.isqrt(num_positions)
    rows, cols = height // patch_size, width // patch_size
    if rows * cols == num_positions and height == width:
        return position_embeddings
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = position_embeddings.shape[-1]
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = functional.interpolate(grid.float(), scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic",
                         align_corners=False).to(position_embeddings.dtype)
    if grid.shape[-2:] != (rows, cols):
        raise ValueError(f"position interpolation gave {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)


@functools.cache
def _legacy_embeddings_class() -> type[ViTEmbeddings]:
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    class LegacyInterpolationViTEmbeddings(ViTEmbeddings):
        """ViT embeddings whose position table is resized as in transformers 4.x (see the module docstring)."""

        def interpolate_pos_encoding(self, embeddings: Tensor, height: int, width: int) -> Tensor:
            patch = self.patch_embeddings.patch_size
            return legacy_interpolate_pos_encoding(self.position_embeddings, height, width, int(patch[0]))

    return LegacyInterpolationViTEmbeddings


class DinoImageTokenizer(nn.Module):
    """``DINOSingleImageTokenizer``: images [B, 3, H, W] in [0, 1] -> tokens [B, 1 + (H/16)(W/16), D]."""

    image_mean: Tensor  # buffers (register_buffer)
    image_std: Tensor

    def __init__(self, vit_config: Mapping[str, Any]) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        config = ViTConfig(**vit_config)
        self.model = ViTModel(config, add_pooling_layer=True)
        self.model.embeddings = _legacy_embeddings_class()(config)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be [B, 3, H, W], got {list(images.shape)}"
        pixels = (images - self.image_mean) / self.image_std
        return self.model(pixels.to(self.model.dtype), interpolate_pos_encoding=True).last_hidden_state


# ----------------------------------------------------------------------------- backbone


class Attention(nn.Module):
    """Multi-head attention with the diffusers parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x [B, N, query_dim], context [B, M, cross_dim] (None: self-attention) -> [B, N, query_dim]."""
        context = x if context is None else context
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # [B, heads, tokens, dim_head]

        q, k, v = heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context))
        out = functional.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Gated GELU: ``proj`` -> (hidden, gate) halves -> hidden * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none") -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * functional.gelu(gate, approximate=self.approximate)


class GELU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none") -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return functional.gelu(self.proj(x), approximate=self.approximate)


_FEED_FORWARD = {
    "geglu": GEGLU,
    "gelu": GELU,
    "gelu-approximate": lambda i, o: GELU(i, o, approximate="tanh"),
}


class FeedForward(nn.Module):
    def __init__(self, dim: int, activation_fn: str = "geglu", mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([_FEED_FORWARD[activation_fn](dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the image tokens, feed-forward; each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, activation_fn: str,
                 attention_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, bias=attention_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim, bias=attention_bias)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer1D(nn.Module):
    """tokens [B, C, N] + image tokens [B, M, D] -> tokens [B, C, N]."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        inner = cfg.inner_dim
        self.norm = nn.GroupNorm(cfg.norm_num_groups, cfg.in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(cfg.in_channels, inner)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, cfg.num_attention_heads, cfg.attention_head_dim, cfg.cross_attention_dim,
                                  cfg.activation_fn, cfg.attention_bias)
            for _ in range(cfg.num_layers)
        ])
        self.proj_out = nn.Linear(inner, cfg.in_channels)

    def forward(self, tokens: Tensor, context: Tensor) -> Tensor:
        hidden = self.proj_in(self.norm(tokens).transpose(1, 2))  # [B, N, inner]
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        return self.proj_out(hidden).transpose(1, 2) + tokens


# ----------------------------------------------------------------------------- triplane


class Triplane1DTokenizer(nn.Module):
    """Learned triplane embeddings [3, C, P, P], as tokens [B, C, 3 P P] and back."""

    def __init__(self, plane_size: int, num_channels: int) -> None:
        super().__init__()
        self.plane_size = plane_size
        self.embeddings = nn.Parameter(torch.randn(3, num_channels, plane_size, plane_size) / math.sqrt(num_channels))

    def forward(self, batch_size: int) -> Tensor:
        c = self.embeddings.shape[1]
        return self.embeddings.permute(1, 0, 2, 3).reshape(1, c, -1).expand(batch_size, -1, -1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        """[B, C, 3 P P] -> [B, 3, C, P, P]."""
        b, c, n = tokens.shape
        p = self.plane_size
        assert n == 3 * p * p, f"expected {3 * p * p} tokens, got {n}"
        return tokens.reshape(b, c, 3, p, p).permute(0, 2, 1, 3, 4)


class TriplaneUpsampleNetwork(nn.Module):
    """[B, 3, Ci, P, P] -> [B, 3, Co, 2P, 2P] by a 2 x 2 stride-2 transposed convolution per plane."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, planes: Tensor) -> Tensor:
        b, n, c, h, w = planes.shape
        up = self.upsample(planes.reshape(b * n, c, h, w))
        return up.reshape(b, n, *up.shape[1:])


class NeRFMLP(nn.Module):
    """Features [..., in] -> raw [..., 4] (density, 3 colour features): ``n_hidden_layers`` hidden layers."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = [nn.Linear(cfg.in_channels, cfg.n_neurons, bias=cfg.bias), act()]
        for _ in range(cfg.n_hidden_layers - 1):
            layers += [nn.Linear(cfg.n_neurons, cfg.n_neurons, bias=cfg.bias), act()]
        layers.append(nn.Linear(cfg.n_neurons, 4, bias=cfg.bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


# ----------------------------------------------------------------------------- the whole model


class TripoSRModel(nn.Module):
    """Images [B, 3, S, S] in [0, 1] (grey background, S = cond_image_size) -> scene codes [B, 3, Co, 2P, 2P]."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.config = config
        self.image_tokenizer = DinoImageTokenizer(config.vit)
        self.tokenizer = Triplane1DTokenizer(config.plane_size, config.num_channels)
        self.backbone = Transformer1D(config.backbone)
        self.post_processor = TriplaneUpsampleNetwork(config.upsample_in_channels, config.triplane_channels)
        self.decoder = NeRFMLP(config.decoder)

    def forward(self, images: Tensor) -> Tensor:
        image_tokens = self.image_tokenizer(images)  # [B, T, D]
        dtype = self.tokenizer.embeddings.dtype
        tokens = self.backbone(self.tokenizer(images.shape[0]), image_tokens.to(dtype))  # [B, C, 3 P P]
        return self.post_processor(self.tokenizer.detokenize(tokens))

    def query(self, triplane: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """Decode ``points`` [N, 3] (object frame, inside the cube of half-side ``radius``) from one scene
        code ``triplane`` [3, Co, H, W]: (density [N] >= 0, rgb [N, 3] in [0, 1]), in float32."""
        assert triplane.ndim == 4 and triplane.shape[0] == 3, f"triplane must be [3, C, H, W], got {triplane.shape}"
        assert points.ndim == 2 and points.shape[1] == 3, f"points must be [N, 3], got {list(points.shape)}"
        r = self.config.renderer
        weight = cast(nn.Linear, self.decoder.layers[0]).weight  # NeRFMLP's first layer
        xyz = points.to(weight.device, torch.float32) / r.radius  # grid_sample's [-1, 1]
        coords = torch.stack([xyz[:, [0, 1]], xyz[:, [0, 2]], xyz[:, [1, 2]]])  # [3, N, 2] per plane
        sampled = functional.grid_sample(triplane.to(weight.device, torch.float32), coords[:, None],
                                mode="bilinear", align_corners=False)  # [3, C, 1, N]
        planes = sampled[:, :, 0].permute(2, 0, 1)  # [N, 3, C]
        features = planes.reshape(len(points), -1) if r.feature_reduction == "concat" else planes.mean(dim=1)
        raw = self.decoder(features.to(weight.dtype)).float()  # [N, 4]
        density = _DENSITY_ACTIVATIONS[r.density_activation]((raw[:, 0] + r.density_bias).clamp(max=60.0))
        return density, torch.sigmoid(raw[:, 1:4])


def published_config() -> TripoSRConfig:
    """The parsed published configuration (what ``make models`` fetches)."""
    return parse_config(PUBLISHED_CONFIG)


def meta_copy(config: TripoSRConfig) -> TripoSRModel:
    """The architecture without memory (parameters on the meta device): for key and shape listings."""
    with torch.device("meta"):
        return TripoSRModel(config)
