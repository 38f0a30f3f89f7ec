"""The backprojection service's API: one MVCRM round's options, report and result, the optional CLIP
scorer, and :class:`BackprojectionBackend`, the base class every backend implements.

:class:`RefineOptions` and :class:`RefineReport` mirror ``glimpse3d.v1.RefineOptions`` and
``glimpse3d.v1.RefineReport`` field for field; in the proto a zero means "use the default"
(:meth:`RefineOptions.from_proto`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from glimpse3d.core.backend import Backend
from glimpse3d.core.backends import BackendRegistry
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.splat import Splat

MAX_STEPS = 5000  # the proto's upper bound on fusion steps

# One click should take seconds. Measured on the synthetic object at 256 px (a view degraded to
# 27.5 dB): 60 steps at 0.02 reach 46.0 dB in 13.8 s, 200 steps at 0.01 reach 51.0 dB in 44.3 s on
# 2 CPU cores; views of the far side are unchanged either way.
DEFAULT_STEPS = 60
# Base Adam step; applies to band-0 SH (colour) and is scaled per parameter group (see fusion.py).
# Measured with the research harness (make research, 128 px, oracle views, 4 rounds, held-out PSNR in
# the mask): at 0.02 the rounds stopped short of the far side's colours (head +2.81, checker box
# +1.08, globe +3.98 dB); 200 steps at 0.02 reached +4.32 dB on the head in 3.3x the time, 60 steps
# at 0.06 +4.22 dB in the same time (checker box +1.33, globe +5.20). Adam normalises the step, so the
# rate sets how far a Gaussian can move in one round; the trust, footprint and anchor terms still
# bound what an untrusted or conflicting view can do (docs/research.md, study 6).
DEFAULT_LEARNING_RATE = 0.06
# Weight of the anchor term (see mvcrm.py): a view that contradicts earlier rounds can move a
# Gaussian of confidence c by at most about 0.013 / (anchor_weight c) in colour, 0.043 / c here.
DEFAULT_ANCHOR_WEIGHT = 0.3
# Relative depth residual |aligned view depth - rendered depth| / rendered depth at which the
# per-pixel geometric trust halves (trust = 2^-(r / tol)^2). The weight-free silhouette depth
# estimator is off by a few percent on true views (at 0.03 a true 45-degree view of the synthetic
# object kept 75 % of its pixels, at 0.05 97 %), so tighter values reject good views.
DEFAULT_DEPTH_TOLERANCE = 0.05
# Weight of the two normal terms (means of 1 - |n . m| over Gaussians, see normals.py).
DEFAULT_NORMAL_WEIGHT = 0.05
DEFAULT_CLIP_THRESHOLD = 0.75


@runtime_checkable
class ClipScorer(Protocol):
    """Image-embedding similarity, e.g. CLIP.

    ``score(a, b)`` takes two float32 RGB images [H, W, 3] in [0, 1] (sizes may differ) and returns
    the cosine similarity of their embeddings (in [-1, 1]; 1 = same content). An optional ``label``
    attribute names the model in round reports.
    """

    def score(self, a: np.ndarray, b: np.ndarray) -> float: ...


@dataclass(frozen=True)
class RefineOptions:
    """Knobs of one MVCRM round (defaults documented at the module constants above).

    steps: fusion Adam steps, 1..5000. learning_rate: base Adam step (> 0). anchor_weight (>= 0):
    pull of the anchor towards the parameters earlier rounds confirmed. depth_tolerance (> 0):
    relative depth residual at which trust halves. normal_weight (>= 0): normal smoothing.
    clip_check: run the CLIP check when a scorer is configured (a proto request's false means the
    service's default, see :meth:`from_proto`). clip_threshold in [0, 1]: cosine
    similarity below which the round is rejected. seed: makes the round deterministic. observed: the
    view is a real photo (an extra photo, posed), not an enhanced render: its pixels are trusted
    wherever the splat covers them, whatever the depth says, and it gets no CLIP check. relift (only
    with observed): the guessed Gaussians the photo shows (no photo has observed them) are replaced
    by the photo lifted on its depth before the fusion (:mod:`.relift`).
    """

    steps: int = DEFAULT_STEPS
    learning_rate: float = DEFAULT_LEARNING_RATE
    anchor_weight: float = DEFAULT_ANCHOR_WEIGHT
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE
    normal_weight: float = DEFAULT_NORMAL_WEIGHT
    clip_check: bool = True
    clip_threshold: float = DEFAULT_CLIP_THRESHOLD
    seed: int = 0
    observed: bool = False
    relift: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer):
            raise InvalidInput(f"steps must be an integer, got {self.steps!r}", field="options.steps")
        if not 1 <= int(self.steps) <= MAX_STEPS:
            raise InvalidInput(f"steps must be in 1..{MAX_STEPS}, got {self.steps}", field="options.steps")
        object.__setattr__(self, "steps", int(self.steps))
        _number(self, "learning_rate", low=0.0, low_open=True)
        _number(self, "anchor_weight", low=0.0)
        _number(self, "depth_tolerance", low=0.0, low_open=True)
        _number(self, "normal_weight", low=0.0)
        _number(self, "clip_threshold", low=0.0, high=1.0)
        if not isinstance(self.clip_check, bool | np.bool_):
            raise InvalidInput(f"clip_check must be a bool, got {self.clip_check!r}", field="options.clip_check")
        object.__setattr__(self, "clip_check", bool(self.clip_check))
        if not isinstance(self.observed, bool | np.bool_):
            raise InvalidInput(f"observed must be a bool, got {self.observed!r}", field="options.observed")
        object.__setattr__(self, "observed", bool(self.observed))
        if not isinstance(self.relift, bool | np.bool_):
            raise InvalidInput(f"relift must be a bool, got {self.relift!r}", field="options.relift")
        object.__setattr__(self, "relift", bool(self.relift))
        if self.relift and not self.observed:
            raise InvalidInput("relift needs observed: only a real photo may replace what the splat guessed",
                               field="options.relift")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or not 0 <= self.seed < 2**64:
            raise InvalidInput(f"seed must be an integer in [0, 2^64), got {self.seed!r}", field="options.seed")
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_proto(cls, message: Any, defaults: RefineOptions | None = None) -> RefineOptions:
        """Options from a ``glimpse3d.v1.RefineOptions`` (or anything with its attributes).

        Every field the message leaves at its zero value (0, false) takes its value from ``defaults``,
        the serving backend's defaults; ``seed`` is taken as is (0 is a seed). ``clip_check`` is an
        ``optional`` field: set (true or false) it is the caller's choice, unset it is the default.
        ``defaults=None`` stands for ``RefineOptions(clip_check=False)``: the module's defaults, with
        the CLIP check only when the message asks for it.
        """
        base = defaults if defaults is not None else cls(clip_check=False)
        has_field = getattr(message, "HasField", None)
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(message, f.name)
            if f.name == "clip_check" and has_field is not None:
                value = value if has_field("clip_check") else base.clip_check
            elif f.name != "seed" and value == 0:
                value = getattr(base, f.name)
            values[f.name] = value
        return cls(**values)


def _number(opts: RefineOptions, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidInput(f"{name} must be a number, got {value!r}", field=f"options.{name}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    if not math.isfinite(v) or bad_low or v > high:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if math.isfinite(high) else "")
        raise InvalidInput(f"{name} must be finite and {bound}, got {value}", field=f"options.{name}")
    object.__setattr__(opts, name, v)


@dataclass(frozen=True)
class RefineReport:
    """What one round did; mirrors ``glimpse3d.v1.RefineReport``.

    accepted_fraction: fraction of object pixels (rendered alpha > 0.5) whose trust exceeds 0.5.
    photometric_error_before/after: trust-weighted mean absolute colour error in [0, 1] between the
    render and the view, before and after the fusion (equal when nothing was fused).
    clip_score: cosine similarity, None when the check did not run (clip_note says why).
    rejected: True when the round left the splat and the confidence unchanged.
    steps: fusion steps run (0 when rejected). mean_confidence: mean per-Gaussian confidence after.
    relift_replaced / relift_added: Gaussians the re-lift removed and lifted from the photo
    (``options.relift``; 0 when it did not run or found nothing to replace).
    """

    accepted_fraction: float
    photometric_error_before: float
    photometric_error_after: float
    clip_score: float | None
    clip_note: str
    rejected: bool
    steps: int
    mean_confidence: float
    relift_replaced: int = 0
    relift_added: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class TrustedView:
    """A view fused *together with* the enhanced view as ground truth: in the product, the input photo.

    Mirrors ``glimpse3d.v1.TrustedView``. ``image`` [H, W, 3] (uint8, or float in [0, 1]; a fourth
    channel is dropped), seen from ``camera`` (same size); ``mask`` [H, W] in [0, 1] says where it shows
    the object and is its per-pixel weight; ``weight`` (>= 0) scales its loss term against the enhanced
    view's (each term is normalised by its own object pixels). See :func:`.mvcrm.refine`.
    """

    image: np.ndarray
    camera: Any  # glimpse3d.core.cameras.Camera
    mask: np.ndarray
    weight: float = 1.0

    def __post_init__(self) -> None:
        from glimpse3d.core.cameras import Camera

        if not isinstance(self.camera, Camera):
            raise InvalidInput(f"trusted view camera must be a Camera, got {type(self.camera).__name__}",
                               field="trusted_views.camera")
        hw = (self.camera.height, self.camera.width)
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[:2] != hw:
            got = list(img.shape) if isinstance(img, np.ndarray) else type(img).__name__
            raise InvalidInput(f"trusted view image must be [H, W, 3] = {[*hw, 3]} to match its camera, got {got}",
                               field="trusted_views.image")
        if img.dtype == np.uint8:
            rgb = img[..., :3].astype(np.float32) / 255.0
        elif np.issubdtype(img.dtype, np.floating) and np.isfinite(img).all():
            rgb = np.clip(img[..., :3].astype(np.float32), 0.0, 1.0)
        else:
            raise InvalidInput("trusted view image must be uint8, or finite floats in [0, 1]",
                               field="trusted_views.image")
        m = self.mask
        if not isinstance(m, np.ndarray) or m.shape != hw or not np.issubdtype(m.dtype, np.number):
            got = list(m.shape) if isinstance(m, np.ndarray) else type(m).__name__
            raise InvalidInput(f"trusted view mask must be [H, W] = {list(hw)}, got {got}", field="trusted_views.mask")
        m = m.astype(np.float32)
        if not np.isfinite(m).all() or m.min() < -1e-3 or m.max() > 1 + 1e-3:
            raise InvalidInput("trusted view mask values must be finite and in [0, 1]", field="trusted_views.mask")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float | np.integer | np.floating) or not (
                math.isfinite(float(w)) and float(w) >= 0):
            raise InvalidInput(f"trusted view weight must be finite and >= 0, got {w!r}", field="trusted_views.weight")
        object.__setattr__(self, "image", rgb)
        object.__setattr__(self, "mask", np.clip(m, 0.0, 1.0))
        object.__setattr__(self, "weight", float(w))


@dataclass(frozen=True, eq=False)
class RefineResult:
    splat: Splat  # refined splat (the input object itself when rejected)
    confidence: np.ndarray  # [N] float32 accumulated per-Gaussian confidence
    report: RefineReport


class BackprojectionBackend(Backend):
    """A backprojection backend: :meth:`refine` fuses one enhanced view into a splat.

    ``defaults`` are the options a request leaves unset (zeros, ``clip_check`` unset), applied by
    :meth:`RefineOptions.from_proto`; a backend sets them in ``_setup``. Backends implement ``_refine``.
    """

    service = "backprojection"
    defaults: RefineOptions = RefineOptions(clip_check=False)

    def refine(
        self,
        splat: Splat,
        view: np.ndarray,
        camera: Any,
        view_depth: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        options: RefineOptions | None = None,
        reference: np.ndarray | None = None,
        *,
        background: Sequence[float] | None = None,
        trusted: Sequence[TrustedView] = (),
        photo_cameras: Sequence[Any] = (),
    ) -> RefineResult:
        """One round; ``options=None`` uses :attr:`defaults`. Arguments as :func:`.mvcrm.refine`, which
        checks each of them (its :class:`InvalidInput` names the field)."""
        opts = self.defaults if options is None else options
        if not isinstance(opts, RefineOptions):
            raise InvalidInput(f"options must be RefineOptions, got {type(opts).__name__}", field="options")
        return self._run("refine", self._refine, splat, view, camera, view_depth, confidence, opts, reference,
                         background=background, trusted=trusted, photo_cameras=photo_cameras)

    def _refine(
        self,
        splat: Splat,
        view: np.ndarray,
        camera: Any,
        view_depth: np.ndarray | None,
        confidence: np.ndarray | None,
        options: RefineOptions,
        reference: np.ndarray | None,
        *,
        background: Sequence[float] | None,
        trusted: Sequence[TrustedView],
        photo_cameras: Sequence[Any] = (),
    ) -> RefineResult:
        raise NotImplementedError


DEFAULT_BACKEND = "mvcrm"
REGISTRY: BackendRegistry[BackprojectionBackend] = BackendRegistry("backprojection")


def make_backend(name: str = DEFAULT_BACKEND, **options: Any) -> BackprojectionBackend:
    """Backend by name (``mvcrm``, ``triton``) with keyword ``options``; call ``load()`` before use."""
    return REGISTRY.create(name, **options)
