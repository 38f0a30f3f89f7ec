"""Extra photos of the same object: pose refinement (glimpse3d.services.backprojection.pose) and
fusion as an observed view, against research ground truth with known cameras."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.errors import InvalidInput
from glimpse3d.core.render import rasterize
from glimpse3d.research.coarse import Stages
from glimpse3d.research.extra import extra_photo_gain, extra_view, photo_identity, surface_splat
from glimpse3d.research.groundtruth import ground_truth
from glimpse3d.research.objects import load_object
from glimpse3d.services.backprojection.pose import KnownView, OrbitPose, PoseHint, find_pose, silhouette_scale

SIDE = 96  # the pose tests (the ray-cast photo's silhouette is about a pixel narrower than the splat's)
FUSION_SIDE = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path_factory.mktemp("research")))
        yield


@pytest.fixture(scope="module")
def stages():
    return Stages.load()


def _errors(found, azimuth: float, elevation: float) -> tuple[float, float, float]:
    daz = abs((found.pose.azimuth_deg - azimuth + 180.0) % 360.0 - 180.0)
    distance = float(np.linalg.norm(found.camera.position))
    return daz, abs(found.pose.elevation_deg - elevation), abs(distance / 2.7 - 1.0)


@pytest.mark.parametrize(("name", "azimuth", "elevation", "hint"), [
    ("head", 180.0, 15.0, (150.0, 15.0)),
    ("checker_box", 90.0, 20.0, (120.0, None)),
])
def test_a_ground_truth_view_is_posed_from_a_hint_30_degrees_off(cache, stages, name, azimuth, elevation, hint):
    gt = ground_truth(name, SIDE)
    view = extra_view(gt, azimuth, elevation)
    matte = stages.depth.estimate(view.rgb_uint8, view.camera).mask
    splat = surface_splat(gt.obj)
    # The splat's silhouette is about a pixel wider than the ray-cast photo's object; uncalibrated, the
    # distance absorbs it (4-6 % at 96 px). Measured at the input photo, whose camera is known:
    known = KnownView(gt.input.camera, stages.depth.estimate(gt.input.rgb_uint8, gt.input.camera).mask)
    assert 1.03 < silhouette_scale(splat, known.camera, known.matte) < 1.2
    # As the gateway asks for a first extra photo (the known view only): no photo has shown this side, but
    # the true surface tells the pose clearly better than the hint does, which is not kept.
    found = find_pose(splat, view.rgb_uint8, matte, PoseHint(*hint), known=known)
    assert not found.hint_kept
    daz, delev, ddist = _errors(found, azimuth, elevation)
    assert daz < 5.0 and delev < 5.0, (daz, delev)
    assert ddist < 0.02, ddist  # the target; measured 0.9 % (head) and 0.1 % (checker box)
    assert found.iou > 0.9


def test_a_view_of_the_guessed_side_keeps_the_hints_angles(cache, stages, caplog):
    """The coarse splat's back is the lift's guess: its outline and blurred colours fit poses far apart, and
    the pose searched from a hint 20 degrees off went 6-53 degrees off (docs/extra-photos.md). No photo has
    shown that side and the search explains the photo no better, so the hint's angles stand, at the input
    photo's distance; a photo the hint's pose cannot explain is searched around as before."""
    from glimpse3d.research.coarse import coarse_splat

    gt = ground_truth("head", FUSION_SIDE)
    splat, matte = coarse_splat(gt, stages)
    view = extra_view(gt, 180.0, 15.0)
    photo_matte = stages.depth.estimate(view.rgb_uint8, view.camera).mask
    known = KnownView(gt.input.camera, matte)
    found = find_pose(splat, view.rgb_uint8, photo_matte, PoseHint(200.0, 15.0), known=known)
    assert found.hint_kept and found.iou >= 0.9
    assert found.pose.azimuth_deg == pytest.approx(200.0, abs=1e-3) and found.pose.elevation_deg == pytest.approx(15.0)
    assert found.pose.distance == pytest.approx(2.7, rel=1e-6)  # from the look-at point
    # once a photo from behind has been fused, that side is observed: the splat decides again
    seen = find_pose(splat, view.rgb_uint8, photo_matte, PoseHint(200.0, 15.0), known=known,
                     photo_cameras=[view.camera])
    assert not seen.hint_kept
    # a photo the hint's pose cannot explain (another object) is searched around, and refused
    other = extra_view(gt, 180.0, 15.0, load_object("table"))
    other_matte = stages.depth.estimate(other.rgb_uint8, other.camera).mask
    with caplog.at_level("INFO", logger="glimpse3d.services.backprojection.pose"), \
            pytest.raises(InvalidInput, match="no camera pose found"):
        find_pose(splat, other.rgb_uint8, other_matte, PoseHint(200.0, 15.0), known=known)
    assert "explains the photo better than the hint's" in caplog.text


def test_the_silhouette_scale_is_measured_where_the_camera_is_known() -> None:
    splat = surface_splat(ground_truth("head", SIDE).obj)
    cam = orbit_camera(30.0, 10.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)
    own = rasterize(splat, cam).alpha.numpy() > 0.5
    assert silhouette_scale(splat, cam, own) == 1.0
    narrower = binary_erosion(own)  # every outline pixel removed
    assert silhouette_scale(splat, cam, narrower) == pytest.approx(own.sum() / narrower.sum())
    with pytest.raises(InvalidInput, match="known view's matte"):
        silhouette_scale(splat, cam, own[:-1])
    with pytest.raises(InvalidInput, match="empty"):
        silhouette_scale(splat, cam, np.zeros_like(own))


def test_a_known_view_that_cannot_calibrate_is_ignored_and_a_misshapen_one_refused(cache) -> None:
    splat = surface_splat(ground_truth("head", SIDE).obj)
    cam = orbit_camera(0.0, 0.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)
    out = rasterize(splat, orbit_camera(150.0, 15.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0))
    photo = np.round(np.clip(out.rgb.numpy(), 0, 1) * 255).astype(np.uint8)
    plain = find_pose(splat, photo, out.alpha.numpy(), PoseHint(150.0, 15.0))
    full = find_pose(splat, photo, out.alpha.numpy(), PoseHint(150.0, 15.0),
                     known=KnownView(cam, np.ones((SIDE, SIDE), np.float32)))  # a matte of the whole image
    assert full.pose == plain.pose
    with pytest.raises(InvalidInput) as err:
        find_pose(splat, photo, out.alpha.numpy(), PoseHint(150.0, 15.0), known=KnownView(cam, np.ones((8, 8))))
    assert err.value.field == "known_mask"


def test_a_photo_the_splat_explains_is_posed_within_2_percent_of_its_distance(cache):
    splat = surface_splat(ground_truth("head", SIDE).obj)
    cam = orbit_camera(180.0, 15.0, 2.7, width=SIDE, height=SIDE, fov_y_deg=40.0)
    out = rasterize(splat, cam, background=(1.0, 1.0, 1.0))
    photo = np.round(np.clip(out.rgb.numpy(), 0, 1) * 255).astype(np.uint8)
    found = find_pose(splat, photo, out.alpha.numpy(), PoseHint(150.0, 15.0))
    daz, delev, ddist = _errors(found, 180.0, 15.0)
    assert daz < 2.0 and delev < 2.0 and ddist < 0.02, (daz, delev, ddist)


def test_orbit_pose_cameras_are_the_orbit_cameras():
    for az, el in ((0.0, 0.0), (30.0, 10.0), (250.0, -40.0)):
        want = orbit_camera(az, el, 2.7, width=64, height=48).world_to_camera
        np.testing.assert_allclose(OrbitPose(az, el).camera(64, 48).world_to_camera, want, atol=1e-9)


def test_a_blank_photo_is_refused_naming_the_field(cache):
    splat = surface_splat(ground_truth("head", SIDE).obj)
    blank = np.full((SIDE, SIDE, 3), 255, np.uint8)
    with pytest.raises(InvalidInput, match="shows no object") as err:
        find_pose(splat, blank, np.zeros((SIDE, SIDE), np.float32), field="extra_photos[1]")
    assert err.value.field == "extra_photos[1]"


def test_a_uniform_photo_is_refused_although_its_matte_is_not_empty(cache):
    # the matting service falls back to a centred ellipse for a blank image; a round splat would fit it
    splat = surface_splat(ground_truth("globe", SIDE).obj)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    ellipse = ((((xx + 0.5 - SIDE / 2) / (0.4 * SIDE)) ** 2 + ((yy + 0.5 - SIDE / 2) / (0.4 * SIDE)) ** 2) <= 1.0)
    with pytest.raises(InvalidInput, match="uniform") as err:
        find_pose(splat, np.full((SIDE, SIDE, 3), 250, np.uint8), ellipse.astype(np.float32), field="photo")
    assert err.value.field == "photo"


def test_another_objects_view_is_refused_naming_the_field(cache, stages):
    gt = ground_truth("head", SIDE)
    view = extra_view(gt, 180.0, 15.0, load_object("table"))
    matte = stages.depth.estimate(view.rgb_uint8, view.camera).mask
    with pytest.raises(InvalidInput, match="no camera pose found") as err:
        find_pose(surface_splat(gt.obj), view.rgb_uint8, matte, PoseHint(150.0, 15.0), field="extra_photos[1]")
    assert err.value.field == "extra_photos[1]"


@pytest.mark.parametrize(("name", "azimuth", "elevation", "hint"), [
    ("head", 180.0, 15.0, 240.0),
    ("checker_box", 90.0, 20.0, 150.0),
])
def test_a_hint_further_off_than_its_window_is_refused_not_posed_at_the_edge(cache, stages, name, azimuth, elevation,
                                                                            hint):
    """60 degrees off, the true pose lies beyond the hint's 45-degree window; the search then ends on the
    window's edge with a high IoU (0.99 and 0.91 at 96 px), 15 degrees from the truth. That is not a pose."""
    gt = ground_truth(name, SIDE)
    view = extra_view(gt, azimuth, elevation)
    matte = stages.depth.estimate(view.rgb_uint8, view.camera).mask
    with pytest.raises(InvalidInput, match="no camera pose found near the hint") as err:
        find_pose(surface_splat(gt.obj), view.rgb_uint8, matte, PoseHint(hint, elevation), field="extra_photos[0]")
    assert err.value.field == "extra_photos[0]"


def test_the_identity_instrument_finds_refused_own_photos_and_accepted_other_objects(cache, stages):
    """Known answers at 64 px (docs/extra-photos.md has all ten objects at 128 px): against its first
    version the head's back keeps its hint; the table's photo is refused by the head and the globe; the
    head's and the globe's backs, round outlines both, are taken for each other (false acceptances);
    the table's own back is refused (a false refusal: the coarse table's outline from behind is not the
    table's). The instrument must report each of these, naming the photo in each refusal."""
    matrix = photo_identity([ground_truth(n, FUSION_SIDE) for n in ("head", "table", "globe")], stages)
    head = matrix.cells["head"]["head"]
    assert head.accepted and head.hint_kept and abs(head.azimuth_deg - 200.0) < 1e-3 and head.iou >= 0.9
    for model in ("head", "globe"):
        cell = matrix.cells[model]["table"]
        assert not cell.accepted and cell.refusal.startswith("table: no camera pose found"), cell
    assert sorted(matrix.false_acceptances) == [("globe", "head"), ("head", "globe")]
    assert matrix.false_refusals == ["table"]
    assert matrix.false_refusal_rate == pytest.approx(1 / 3) and matrix.false_acceptance_rate == pytest.approx(2 / 6)
    with pytest.raises(InvalidInput, match="objects must differ"):
        photo_identity([ground_truth("head", FUSION_SIDE)] * 2, stages)
    with pytest.raises(InvalidInput, match="at least two objects"):
        photo_identity([ground_truth("head", FUSION_SIDE)], stages)


def test_a_bad_hint_is_refused():
    with pytest.raises(InvalidInput) as err:
        PoseHint(float("nan"))
    assert err.value.field == "hint.azimuth_deg"


def test_the_back_view_as_an_extra_photo_raises_heldout_psnr(cache, stages):
    score = extra_photo_gain(ground_truth("head", FUSION_SIDE), stages, hint_offset_deg=None)
    assert score.extra_db > score.single_db + 1.0, (score.single_db, score.extra_db)


def test_the_back_photo_relifted_reshapes_what_fusion_alone_only_recolours(cache, tmp_path):
    """The research CLI's extra-photo figures: on the checker box the re-lifted back photo gains
    +1.6 dB (64 px), the same photo fused without the re-lift +0.6 dB."""
    import json

    from glimpse3d.research.__main__ import main

    assert main(["extra", "--objects", "checker_box", "--resolution", str(FUSION_SIDE), "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "extra.json").read_text())["checker_box"]
    assert row["relift_gain_db"] > 1.2 and row["relift_gain_db"] > row["fused_gain_db"] + 0.5, row


def test_several_extra_photos_are_added_one_after_the_other(cache, tmp_path):
    """``extra --views``: the photos are fused in order, each re-lift knowing the earlier photos' cameras;
    the gain after the first is the one-photo gain (the same round on the same splat)."""
    import json

    from glimpse3d.research.__main__ import main

    args = ["extra", "--objects", "checker_box", "--resolution", str(FUSION_SIDE)]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--views", "180,15", "90,15", "--out", str(tmp_path / "two")]) == 0
    one = json.loads((tmp_path / "one" / "extra.json").read_text())["checker_box"]
    two = json.loads((tmp_path / "two" / "extra.json").read_text())["checker_box"]
    assert two["relift_gain_after_1_db"] == pytest.approx(one["relift_gain_db"], abs=1e-9)
    assert "relift_gain_after_1_db" not in one
    assert two["relift_gain_db"] > two["relift_gain_after_1_db"] + 0.3, two  # the side photo adds what it shows
    with pytest.raises(SystemExit) as err:
        main([*args, "--views", "180"])
    assert err.value.code == 2


def test_an_observed_view_is_fused_where_its_depth_disagrees(cache, stages):
    from glimpse3d.research.coarse import coarse_splat
    from glimpse3d.services.backprojection.api import RefineOptions
    from glimpse3d.services.backprojection.mvcrm import refine

    gt = ground_truth("head", FUSION_SIDE)
    splat, _ = coarse_splat(gt, stages)
    view = extra_view(gt, 180.0, 15.0)
    wrong = np.where(view.depth > 0, 5.0 + np.random.default_rng(0).random(view.depth.shape), 0.0)  # no agreement
    plain = refine(splat, view.rgb_uint8, view.camera, wrong.astype(np.float32), None, RefineOptions(steps=5))
    real = refine(splat, view.rgb_uint8, view.camera, wrong.astype(np.float32), None,
                  RefineOptions(steps=5, observed=True))
    assert "real photo" in real.report.clip_note and not real.report.rejected
    assert real.report.photometric_error_after < real.report.photometric_error_before
    assert real.report.mean_confidence > plain.report.mean_confidence


def test_cli_extra_photo_hints(tmp_path):
    from glimpse3d.gateway.cli import CliError, build_parser, extra_photo

    photo = tmp_path / "back.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\nbytes")
    plain = extra_photo(str(photo))
    assert plain.image_data == photo.read_bytes() and not plain.HasField("azimuth_deg")
    hinted = extra_photo(f"{photo}@180,15")
    assert (hinted.azimuth_deg, hinted.elevation_deg) == (180.0, 15.0)
    assert extra_photo(f"{photo}@90").HasField("azimuth_deg") and not extra_photo(f"{photo}@90").HasField(
        "elevation_deg")
    for bad in (f"{photo}@north", f"{photo}@1,2,3"):
        with pytest.raises(CliError, match="hint after @"):
            extra_photo(bad)
    ns = build_parser().parse_args(["generate", "a.jpg", "--extra", "b.jpg", "c.jpg@90", "--out", "o"])
    assert ns.extra == ["b.jpg", "c.jpg@90"]
