"""The LGM network (Tang et al. 2024): an asymmetric U-Net over four posed views with
cross-view attention.

Each view enters as 9 channels (ImageNet-normalised RGB + 6 Plücker ray channels, :mod:`.rays`);
the views meet only in the attention layers. The decoder stops one level short of the input, so
each output pixel of each view is one Gaussian of 14 values (position 3, opacity 1, scale 3,
rotation 4 as w, x, y, z, colour 3; :func:`activate`). :data:`BIG` is the published configuration.
Attribute names follow the published checkpoint's keys, so its state dict loads as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the usual name

NUM_VIEWS = 4
IN_CHANNELS = 9  # RGB + Plücker (moment 3, direction 3)
OUT_CHANNELS = 14  # position 3, opacity 1, scale 3, rotation 4, rgb 3
SKIP_SCALE = math.sqrt(0.5)
NORM_EPS = 1e-5


@dataclass(frozen=True)
class LGMConfig:
    """Architecture of the LGM U-Net; the defaults are the published ``big`` model.

    input_size: side of the square input views in pixels.
    down_channels / down_attention: width and cross-view attention of each encoder level.
    up_channels / up_attention: the same for the decoder (fewer levels than the encoder).
    layers_per_block: residual blocks per encoder level (decoder levels have one more).
    attention_heads / norm_groups: heads of every attention layer, groups of every GroupNorm.
    """

    input_size: int = 256
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = 2
    attention_heads: int = 16
    norm_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "down_channels", tuple(int(c) for c in self.down_channels))
        object.__setattr__(self, "up_channels", tuple(int(c) for c in self.up_channels))
        object.__setattr__(self, "down_attention", tuple(bool(a) for a in self.down_attention))
        object.__setattr__(self, "up_attention", tuple(bool(a) for a in self.up_attention))
        down, up = self.down_channels, self.up_channels
        if not down or len(down) != len(self.down_attention):
            raise ValueError("down_channels and down_attention must be non-empty and of equal length")
        if not up or len(up) != len(self.up_attention) or len(up) > len(down):
            raise ValueError("up_channels and up_attention must be of equal length, at most as many as down_channels")
        mirrored = tuple(reversed(down))[: len(up)]
        if up != mirrored:  # each decoder level concatenates the skips of the encoder level it mirrors
            raise ValueError(f"up_channels must mirror the deepest down_channels {list(mirrored)}, got {list(up)}")
        if self.layers_per_block < 1 or self.attention_heads < 1 or self.norm_groups < 1:
            raise ValueError("layers_per_block, attention_heads and norm_groups must be >= 1")
        for c in (*down, *up):
            if c < 1 or c % self.norm_groups:
                raise ValueError(f"every channel count must be a multiple of norm_groups={self.norm_groups}, got {c}")
            if c % self.attention_heads:
                raise ValueError(f"every channel count must be a multiple of attention_heads, got {c}")
        stride = 2 ** (len(down) - 1)
        if self.input_size < stride or self.input_size % stride:
            raise ValueError(f"input_size must be a positive multiple of {stride}, got {self.input_size}")

    @property
    def splat_size(self) -> int:
        """Side of each view's Gaussian grid: the input downsampled by the encoder, upsampled by the decoder."""
        return self.input_size // 2 ** (len(self.down_channels) - 1) * 2 ** (len(self.up_channels) - 1)

    @property
    def num_gaussians(self) -> int:
        return NUM_VIEWS * self.splat_size**2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LGMConfig:
        """A config from a JSON object; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LGM config key(s): {', '.join(unknown)}")
        return cls(**dict(data))


BIG = LGMConfig()


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; ``(conv2(act(norm2(conv1(act(norm1(x)))))) + shortcut(x)) * skip``."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, padding=1)
        self.shortcut: nn.Module = nn.Conv2d(cin, cout, kernel_size=1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [N, Cin, H, W] -> [N, Cout, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens [B, N, C] (scaled dot product, bias-free qkv)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MVAttention(nn.Module):
    """Attention across all pixels of the four views of one object, with a scaled residual."""

    def __init__(self, dim: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(dim, groups)
        self.attn = SelfAttention(dim, heads)

    def forward(self, x: Tensor) -> Tensor:  # [B*V, C, H, W]
        bv, c, h, w = x.shape
        assert bv % NUM_VIEWS == 0, f"the batch must hold whole {NUM_VIEWS}-view sets, got {bv} images"
        tokens = self.norm(x).reshape(bv // NUM_VIEWS, NUM_VIEWS, c, h * w).permute(0, 1, 3, 2)
        out = self.attn(tokens.reshape(bv // NUM_VIEWS, NUM_VIEWS * h * w, c))  # [B, V*H*W, C]
        out = out.reshape(bv // NUM_VIEWS, NUM_VIEWS, h * w, c).permute(0, 1, 3, 2).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


def _attention_list(channels: int, count: int, enabled: bool, cfg: LGMConfig) -> nn.ModuleList:
    """``count`` attention layers, or ``count`` empty slots (no parameters) when disabled."""
    return nn.ModuleList(  # torch annotates Iterable[Module]; ModuleList registers None entries as empty slots
        [MVAttention(channels, cfg.attention_heads, cfg.norm_groups) if enabled else None for _ in range(count)]  # pyright: ignore[reportArgumentType]
    )


class DownBlock(nn.Module):
    """``layers`` residual(+attention) blocks, then an optional stride-2 conv; returns every output as a skip."""

    def __init__(self, cin: int, cout: int, attention: bool, downsample: bool, cfg: LGMConfig) -> None:
        super().__init__()
        n = cfg.layers_per_block
        self.nets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, cfg.norm_groups) for i in range(n)])
        self.attns = _attention_list(cout, n, attention, cfg)
        self.downsample = nn.Conv2d(cout, cout, kernel_size=3, stride=2, padding=1) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for net, attn in zip(self.nets, self.attns, strict=True):
            x = net(x)
            x = attn(x) if attn is not None else x
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """Residual, attention, residual at the bottleneck."""

    def __init__(self, channels: int, attention: bool, cfg: LGMConfig) -> None:
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels, cfg.norm_groups) for _ in range(2)])
        self.attns = _attention_list(channels, 1, attention, cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = self.nets[0](x)
        x = self.attns[0](x) if self.attns[0] is not None else x
        return self.nets[1](x)


class UpBlock(nn.Module):
    """``layers + 1`` residual(+attention) blocks each eating one skip (the last one the previous
    level's, of width ``cskip``), then an optional 2x nearest upsampling + 3x3 conv."""

    def __init__(self, cin: int, cskip: int, cout: int, attention: bool, upsample: bool, cfg: LGMConfig) -> None:
        super().__init__()
        n = cfg.layers_per_block + 1
        self.nets = nn.ModuleList([
            ResnetBlock((cin if i == 0 else cout) + (cskip if i == n - 1 else cout), cout, cfg.norm_groups)
            for i in range(n)
        ])
        self.attns = _attention_list(cout, n, attention, cfg)
        self.upsample = nn.Conv2d(cout, cout, kernel_size=3, padding=1) if upsample else None

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        for net, attn, skip in zip(self.nets, self.attns, reversed(skips), strict=True):
            x = net(torch.cat([x, skip], dim=1))
            x = attn(x) if attn is not None else x
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    """The asymmetric U-Net: [B*V, 9, S, S] -> [B*V, 14, S', S'] with S' = ``cfg.splat_size``."""

    def __init__(self, cfg: LGMConfig) -> None:
        super().__init__()
        down, up = cfg.down_channels, cfg.up_channels
        self.conv_in = nn.Conv2d(IN_CHANNELS, down[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownBlock(down[max(i - 1, 0)], down[i], cfg.down_attention[i], i < len(down) - 1, cfg)
            for i in range(len(down))
        ])
        self.mid_block = MidBlock(down[-1], cfg.mid_attention, cfg)
        self.up_blocks = nn.ModuleList([
            UpBlock(up[max(i - 1, 0)], down[max(-2 - i, -len(down))], up[i], cfg.up_attention[i], i < len(up) - 1, cfg)
            for i in range(len(up))
        ])
        self.norm_out = _norm(up[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(up[-1], OUT_CHANNELS, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x)
            skips.extend(block_skips)
        x = self.mid_block(x)
        for block in self.up_blocks:
            n = len(cast(UpBlock, block).nets)
            x = block(x, skips[-n:])
            skips = skips[:-n]
        return self.conv_out(F.silu(self.norm_out(x)))


class LGMNet(nn.Module):
    """U-Net + the final 1x1 ``conv``: four posed views -> raw (pre-activation) Gaussian maps."""

    def __init__(self, cfg: LGMConfig = BIG) -> None:
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg)
        self.conv = nn.Conv2d(OUT_CHANNELS, OUT_CHANNELS, kernel_size=1)

    def forward(self, views: Tensor) -> Tensor:
        """views [B, 4, 9, S, S] -> raw Gaussians [B, 4 * S' * S', 14] (view-major, then row, column)."""
        b, v, c, h, w = views.shape
        s = self.config.input_size
        assert (v, c, h, w) == (NUM_VIEWS, IN_CHANNELS, s, s), \
            f"views must be [B, 4, 9, {s}, {s}], got {list(views.shape)}"
        x = self.conv(self.unet(views.reshape(b * v, c, h, w)))  # [B*4, 14, S', S']
        return x.reshape(b, v, OUT_CHANNELS, -1).permute(0, 1, 3, 2).reshape(b, -1, OUT_CHANNELS)


def activate(raw: Tensor) -> dict[str, Tensor]:
    """LGM's published output activations on raw Gaussians [..., 14].

    position clamp to [-1, 1]; opacity sigmoid; scale 0.1 * softplus; rotation normalised (over the
    4 quaternion values of each Gaussian); colour 0.5 * tanh + 0.5.
    """
    assert raw.shape[-1] == OUT_CHANNELS, f"raw Gaussians must end in {OUT_CHANNELS} values, got {list(raw.shape)}"
    return {
        "position": raw[..., 0:3].clamp(-1.0, 1.0),
        "opacity": torch.sigmoid(raw[..., 3]),
        "scale": 0.1 * F.softplus(raw[..., 4:7]),
        "rotation": F.normalize(raw[..., 7:11], dim=-1),
        "rgb": 0.5 * torch.tanh(raw[..., 11:14]) + 0.5,
    }
