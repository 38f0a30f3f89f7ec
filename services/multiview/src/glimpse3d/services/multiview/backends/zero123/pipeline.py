"""Zero-1-to-3 sampling from diffusers components (the model half of the ``zero123`` backend).

Each view is conditioned on the input image twice: one cross-attention token (the CLIP image
embedding and the relative pose through ``clip_camera_projection``) and the input's VAE latent
stacked on the noisy latents (8 UNet input channels). Classifier-free guidance uses a zero token and
zero latents for the unconditional branch (skipped when ``guidance_scale <= 1``). DDIM runs all views
of a chunk in one batch; each view has its own generator, so a view does not depend on batching.
Cancellation is checked after every step. Import only after :func:`glimpse3d.core.models.offline_hub`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from glimpse3d.core.cancel import check_cancelled
from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.core.models import ModelMissing

log = logging.getLogger(__name__)

POSE_DIMS = 4
# Projection folder name -> prefix of its two tensors (published diffusers conversions).
PROJECTION_LAYOUTS = {"clip_camera_projection": "proj", "cc_projection": "projection"}


@dataclass
class Zero123Components:
    """The loaded model parts; ``device`` is where the computation runs."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    projection: torch.nn.Linear  # [D + 4] -> [D]
    scheduler_config: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    @property
    def resolution(self) -> int:
        """Side of the square images the model works at (256 for the published checkpoints)."""
        return int(self.unet.config["sample_size"]) * self.vae_scale_factor


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    guidance_scale: float
    eta: float


def _weight_names(component: str) -> tuple[str, ...]:
    if component == "image_encoder":
        return ("model{}.safetensors", "pytorch_model{}.bin")
    return ("diffusion_pytorch_model{}.safetensors", "diffusion_pytorch_model{}.bin")


def _has_weights(root: Path, component: str, variant: str | None) -> bool:
    suffix = f".{variant}" if variant else ""
    return any((root / component / name.format(suffix)).is_file() for name in _weight_names(component))


def projection_folder(root: Path) -> str:
    """The camera projection's folder name in this model directory."""
    for name in PROJECTION_LAYOUTS:
        if (root / name / "config.json").is_file() or any((root / name).glob("diffusion_pytorch_model*")):
            return name
    raise ModelMissing(
        f"{root} has no camera projection folder ({' or '.join(PROJECTION_LAYOUTS)}). Run `make models`",
        field="model_dir",
    )


def resolve_variant(root: Path, requested: str, dtype: torch.dtype) -> str | None:
    """The weight-file variant to load (None = full precision). ``auto`` prefers full precision on a
    float32 run when its files are there, else ``fp16``, else whichever complete set exists."""
    components = ("unet", "vae", "image_encoder", projection_folder(root))
    if requested != "auto":
        variant = None if requested == "full" else requested
        missing = [c for c in components if not _has_weights(root, c, variant)]
        if missing:
            raise ModelMissing(
                f"model {root}: no {requested} weight files for {', '.join(missing)}. Run `make models` "
                f"or choose another variant", field="variant")
        return variant
    order = [None, "fp16", "fp16_ema"] if dtype == torch.float32 else ["fp16", None, "fp16_ema"]
    for variant in order:
        if all(_has_weights(root, c, variant) for c in components):
            return variant
    raise ModelMissing(f"model {root}: weight files missing for some of {', '.join(components)}. Run `make models`",
                       field="model_dir")


def load_projection(folder: Path, variant: str | None, dtype: torch.dtype) -> torch.nn.Linear:
    """The camera projection Linear(D + 4 -> D) from its diffusers folder (safetensors or .bin)."""
    prefix = PROJECTION_LAYOUTS[folder.name]
    suffix = f".{variant}" if variant else ""
    path = folder / f"diffusion_pytorch_model{suffix}.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        path = folder / f"diffusion_pytorch_model{suffix}.bin"
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    except KeyError as err:
        raise FailedPrecondition(f"{path} lacks tensor {err}; keys: {sorted(state)}", field="model_dir") from err
    out_dim, in_dim = weight.shape
    if in_dim != out_dim + POSE_DIMS or tuple(bias.shape) != (out_dim,):
        raise FailedPrecondition(f"{path}: projection must map D + 4 -> D, got weight {list(weight.shape)}",
                                 field="model_dir")
    linear = torch.nn.Linear(in_dim, out_dim)
    linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return linear.to(dtype=dtype).eval()


def _check_shapes(unet: UNet2DConditionModel, vae: AutoencoderKL, encoder: CLIPVisionModelWithProjection,
                  projection: torch.nn.Linear, root: Path) -> None:
    latent = vae.config["latent_channels"]
    width = projection.out_features
    problems = []
    unet_in, unet_out = unet.config["in_channels"], unet.config["out_channels"]
    if unet_in != 2 * latent or unet_out != latent:
        problems.append(f"unet in/out channels {unet_in}/{unet_out}, expected {2 * latent}/{latent}")
    if unet.config["cross_attention_dim"] != width or encoder.config.projection_dim != width:
        problems.append(f"widths: unet cross-attention {unet.config['cross_attention_dim']}, image encoder "
                        f"{encoder.config.projection_dim}, projection {width}")
    if problems:
        raise FailedPrecondition(f"model {root} is not a Zero-1-to-3 checkpoint: {'; '.join(problems)}",
                                 field="model_dir")


def load_components(root: Path, device: torch.device, dtype: torch.dtype, variant: str = "auto") -> Zero123Components:
    """Load every part from the model folder ``root`` (diffusers / transformers ``from_pretrained``)."""
    chosen = resolve_variant(root, variant, dtype)
    kw: dict[str, Any] = {"variant": chosen, "local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, **kw)
    encoder = CLIPVisionModelWithProjection.from_pretrained(root, subfolder="image_encoder", dtype=dtype, **kw)
    extractor = CLIPImageProcessor.from_pretrained(root, subfolder="feature_extractor", local_files_only=True)
    projection = load_projection(root / projection_folder(root), chosen, dtype)
    scheduler_config = DDIMScheduler.load_config(root, subfolder="scheduler", local_files_only=True)
    _check_shapes(unet, vae, encoder, projection, root)
    for module in (unet, vae, encoder, projection):
        module.eval().requires_grad_(False)
    log.info("zero123 components loaded", extra={"path": str(root), "variant": chosen or "full", "dtype": str(dtype)})
    return Zero123Components(unet, vae, encoder, extractor, projection, scheduler_config, device, dtype)


def place(components: Zero123Components, attention_slicing: bool, cpu_offload: bool) -> list[Any]:
    """Move the models to the device, or (``cpu_offload``) leave them on the CPU with accelerate hooks
    that bring each one to the device only while it runs. Returns the offload hooks."""
    c = components
    if attention_slicing:
        c.unet.set_attention_slice("auto")
    if not cpu_offload:
        for module in (c.unet, c.vae, c.image_encoder, c.projection):
            module.to(c.device)  # pyright: ignore[reportArgumentType]  # diffusers' @wraps(Module.to)
        return []
    from accelerate import cpu_offload_with_hook

    hooks, hook = [], None
    for module in (c.image_encoder, c.projection, c.vae, c.unet):
        _, hook = cpu_offload_with_hook(module, c.device, prev_module_hook=hook)
        hooks.append(hook)
    return hooks


def encode_input(components: Zero123Components, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP image embedding [1, D], VAE latent mode [1, 4, h, w]) of ``image`` uint8 [R, R, 3]."""
    c = components
    pixels = c.feature_extractor(images=[image], return_tensors="pt").pixel_values
    embedding = c.image_encoder(pixels.to(c.device, c.dtype)).image_embeds  # [1, D]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(c.device, c.dtype) / 127.5 - 1.0  # [1, 3, R, R]
    # encode/decode/step return a dataclass or a tuple (return_dict), annotated as the union.
    latents = c.vae.encode(x).latent_dist.mode()  # pyright: ignore[reportAttributeAccessIssue]  # [1, 4, R/f, R/f]
    return embedding, latents


def conditioning(
    components: Zero123Components, embedding: torch.Tensor, latents: torch.Tensor, poses: torch.Tensor, guided: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-attention tokens [B', 1, D], image latents [B', 4, h, w]) for ``poses`` [B, 4];
    B' = 2B with the unconditional half (zero token, zero latents) first when ``guided``."""
    b = poses.shape[0]
    assert poses.shape == (b, POSE_DIMS), f"poses must be [B, {POSE_DIMS}], got {list(poses.shape)}"
    pose = poses.to(embedding.device, embedding.dtype)
    tokens = components.projection(torch.cat([embedding.expand(b, -1), pose], dim=-1))[:, None, :]  # [B, 1, D]
    image_latents = latents.expand(b, -1, -1, -1)  # [B, 4, h, w]
    if not guided:
        return tokens, image_latents
    return torch.cat([torch.zeros_like(tokens), tokens]), torch.cat([torch.zeros_like(image_latents), image_latents])


def view_generators(seed: int, count: int, start: int = 0) -> list[torch.Generator]:
    """One CPU generator per view, seeded from (request seed, view index) through a SeedSequence."""
    gens = []
    for i in range(start, start + count):
        state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, i]).generate_state(1, np.uint64)
        gens.append(torch.Generator("cpu").manual_seed(int(state[0])))
    return gens


def _denoise(components: Zero123Components, tokens: torch.Tensor, image_latents: torch.Tensor,
             generators: list[torch.Generator], settings: SamplerSettings) -> torch.Tensor:
    """DDIM from pure noise to clean latents [B, 4, h, w]."""
    c = components
    b = len(generators)
    guided = tokens.shape[0] == 2 * b
    # per call: schedulers keep state. from_config is annotated as possibly returning (scheduler, unused kwargs).
    scheduler = cast(DDIMScheduler, DDIMScheduler.from_config(c.scheduler_config))
    scheduler.set_timesteps(settings.steps, device=c.device)
    shape = (b, c.vae.config["latent_channels"], *image_latents.shape[-2:])
    latents = randn_tensor(shape, generator=generators, device=c.device, dtype=c.dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = torch.cat([latents] * 2) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)  # pyright: ignore[reportArgumentType]  # int | Tensor
        eps = c.unet(torch.cat([model_in, image_latents], dim=1), t, encoder_hidden_states=tokens).sample
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + settings.guidance_scale * (eps_c - eps_u)
        # diffusers annotates timestep as int and generator as a single one; DDIM takes a tensor and a list.
        step = scheduler.step(eps, t, latents, eta=settings.eta, generator=generators)  # pyright: ignore[reportArgumentType]
        latents = step.prev_sample  # pyright: ignore[reportAttributeAccessIssue]
        check_cancelled()
    return latents


def sample_views(
    components: Zero123Components, image: np.ndarray, poses: np.ndarray, seed: int, settings: SamplerSettings,
    batch_size: int,
) -> np.ndarray:
    """Images [B, R, R, 3] in [0, 1] of the object in ``image`` (uint8 [R, R, 3]) seen from ``poses``
    [B, 4] (relative Zero-1-to-3 poses), ``batch_size`` views per denoising loop."""
    c = components
    r = c.resolution
    assert image.shape == (r, r, 3) and image.dtype == np.uint8, f"image must be uint8 [{r}, {r}, 3]"
    guided = settings.guidance_scale > 1.0
    embedding, latents = encode_input(c, image)
    out: list[np.ndarray] = []
    for start in range(0, len(poses), batch_size):
        chunk = torch.as_tensor(np.asarray(poses[start:start + batch_size], np.float32))
        tokens, image_latents = conditioning(c, embedding, latents, chunk, guided)
        clean = _denoise(c, tokens, image_latents, view_generators(seed, len(chunk), start), settings)
        # [b, 3, R, R] in [-1, 1]
        decoded = c.vae.decode(clean / c.vae.config["scaling_factor"]).sample  # pyright: ignore[reportAttributeAccessIssue]
        out.append(((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy())
        log.debug("zero123: views %d..%d sampled", start, start + len(chunk) - 1)
    return np.concatenate(out)

