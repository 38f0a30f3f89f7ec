"""The six studies (glimpse3d.research.suite / report / learned): statistics, feeds, learned metrics,
and the --quick run end to end on one object."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glimpse3d.core.errors import InvalidInput
from glimpse3d.research import __main__ as cli
from glimpse3d.research.groundtruth import ground_truth
from glimpse3d.research.learned import NO_WEIGHTS, clip_similarity, load_clip, load_lpips
from glimpse3d.research.models import LPIPS_VGG
from glimpse3d.research.report import compare, format_compare, load_results
from glimpse3d.research.rounds import make_feed, other_object, round_cameras
from glimpse3d.research.suite import Settings, _feedback_tracking, settings_for, summarise


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "gt-cache"))


def test_summarise_mean_and_bootstrap_interval() -> None:
    assert summarise([2.0]) == {"mean": 2.0, "ci95": None, "n": 1}
    assert summarise([3.0, 3.0, 3.0])["ci95"] == [3.0, 3.0]
    assert summarise([1.0, float("nan"), None])["n"] == 1  # type: ignore[list-item]
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 1.0, 40)
    s = summarise(values)
    assert s["mean"] == pytest.approx(values.mean())
    lo, hi = s["ci95"]
    # The percentile bootstrap of a mean is close to mean +- 1.96 sd / sqrt(n).
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert lo < s["mean"] < hi and (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    assert summarise(values, seed=0) == summarise(values, seed=0)  # deterministic


def test_settings_validate_and_objects_narrow_every_study() -> None:
    s = settings_for("default", objects=["torus"])
    assert s.objects == s.round_objects == s.ablation_objects == ("torus",)
    with pytest.raises(InvalidInput, match="unknown preset"):
        settings_for("huge")
    with pytest.raises(InvalidInput, match="unknown object 'teapot'"):
        Settings("x", ("teapot",), 64, 1, (), (), 1)
    with pytest.raises(InvalidInput, match=r"rounds must be in 1\.\.7"):
        settings_for("quick", rounds=9)
    full = settings_for("full")
    assert [full.adversarial_kinds(i) for i in range(2)] == [("shifted", "rotated", "other")] * 2
    default = settings_for("default")
    assert [default.adversarial_kinds(i) for i in range(3)] == [("shifted",), ("rotated",), ("other",)]


def test_adversarial_feeds_are_geometry_inconsistent_versions_of_the_truth() -> None:
    gt = ground_truth("head", 64)
    cam = round_cameras(2, 64)[1]
    blank = np.zeros((64, 64, 3), np.uint8)
    oracle = make_feed("oracle", gt)(0, cam, blank, None)
    shifted = make_feed("shifted", gt)(0, cam, blank, None)
    np.testing.assert_array_equal(shifted[:, 8:], oracle[:, :-8])  # an eighth of the frame to the right
    assert (shifted[:, :8] == 255).all()
    rotated = make_feed("rotated", gt)(0, cam, blank, None)
    other = make_feed("other", gt)(0, cam, blank, None)
    for view in (rotated, other):
        assert view.shape == oracle.shape and np.abs(view.astype(int) - oracle).mean() > 5
    assert other_object("head") != "head"
    with pytest.raises(InvalidInput):
        make_feed("dreams", gt)


def test_feedback_tracking_counts_sign_agreement() -> None:
    rows = [{"psnr_mask_db": 10.0, "photo_psnr_db": 30.0, "photo_consistency_db": 20.0},
            {"psnr_mask_db": 12.0, "photo_psnr_db": 31.0, "photo_consistency_db": 19.0},
            {"psnr_mask_db": 11.0, "photo_psnr_db": 30.5, "photo_consistency_db": 19.5},
            {"psnr_mask_db": 13.0, "photo_psnr_db": 32.0, "photo_consistency_db": 18.0}]
    out = _feedback_tracking({"oracle": {"per_object": {"a": rows}}})
    assert out["rounds"] == 3
    assert out["photo_psnr_db"]["sign_agreement"] == 1.0 and out["photo_psnr_db"]["pearson_r"] > 0.9
    assert out["photo_consistency_db"]["sign_agreement"] == 0.0 and out["photo_consistency_db"]["pearson_r"] < -0.9
    assert out["round_report"]["share_of_rounds_that_improved_heldout"] == pytest.approx(2 / 3)


def test_lpips_reads_a_vgg_checkpoint_in_the_published_layout(tmp_path) -> None:
    scorer, note = load_lpips(tmp_path)
    assert scorer is None and note.startswith(NO_WEIGHTS) and LPIPS_VGG in note
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    features = torchvision.models.vgg16().features.state_dict()
    folder = tmp_path / LPIPS_VGG
    folder.mkdir(parents=True)
    save_file({f"features.{k}": v.contiguous() for k, v in features.items()}, str(folder / "model.safetensors"))
    scorer, note = load_lpips(tmp_path)
    assert scorer is not None and note == "LPIPS-VGG v0.1"
    rng = np.random.default_rng(0)
    a = rng.random((64, 64, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1).astype(np.float32)
    assert scorer.distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert scorer.distance(a, b) > 1e-4 and scorer.distance(a, b) == pytest.approx(scorer.distance(b, a), rel=1e-4)
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    scorer, note = load_lpips(tmp_path)
    assert scorer is None and "cannot be read" in note


def test_clip_similarity_through_the_backprojection_scorer(tmp_path) -> None:
    from glimpse3d.services.backprojection.tiny import write_tiny_models

    scorer, note = load_clip(tmp_path)
    assert scorer is None and note.startswith(NO_WEIGHTS)
    write_tiny_models(tmp_path)
    scorer, note = load_clip(tmp_path)
    assert scorer is not None and note == "clip/clip-vit-base-patch32"
    image = ground_truth("globe", 64).input.rgb_uint8
    assert clip_similarity(scorer, [image, image], image) == pytest.approx(1.0, abs=1e-4)
    assert clip_similarity(scorer, [255 - image], image) < 0.999


def test_quick_run_writes_every_study_and_compare_diffs_runs(tmp_path, capsys) -> None:
    """`python -m glimpse3d.research run --quick` end to end (one object, 64 px), then `compare`."""
    assert cli.main(["run", "--quick", "--out", str(tmp_path), "--name", "a"]) == 0
    run = tmp_path / "a"
    results = json.loads((run / "results.json").read_text())
    studies = results["studies"]
    assert set(studies) >= {"coarse", "multiview_baseline", "inconsistency", "depth", "before_after", "clip",
                            "ablations"}
    # Learned backends and metrics without weights are n/a with the reason, never a number.
    assert studies["multiview_baseline"]["backends"]["zero123"]["status"].startswith("n/a: no weights")
    assert studies["depth"]["backends"]["dpt"]["status"].startswith("n/a: no weights")
    assert studies["clip"]["status"].startswith(NO_WEIGHTS) and "lpips" not in studies["coarse"]["per_object"]["head"]
    # Ground-truth views are consistent; independent enhancements and the coarse splat are not.
    inc = {k: v["summary"]["inconsistency"]["mean"] for k, v in studies["inconsistency"]["sets"].items()
           if v["status"] == "ok"}
    assert inc["ground truth"] < 0.02 < inc["coarse splat renders"]
    # Study 5: versions 1..3 with every detailed metric; the oracle feed raises the held-out PSNR.
    oracle = studies["before_after"]["feeds"]["oracle"]["per_object"]["head"]
    assert len(oracle) == 3 and oracle[-1]["psnr_mask_db"] > oracle[0]["psnr_mask_db"] + 1.0
    assert {"ssim", "photo_psnr_db", "photo_consistency_db"} <= set(oracle[0])
    # Study 6: every variant but the CLIP check (no CLIP model) on the three feed kinds.
    variants = studies["ablations"]["variants"]
    assert "no clip check" not in variants and len(variants) == 12
    assert {"no trusted photo", "no round guard", "no trusted photo, no guard", "no densification",
            "no carving"} <= set(variants)
    assert all(set(v) == {"oracle", "classical", "adversarial"} for v in variants.values())
    assert results["targets"]["adversarial_damage_ratio"]["naive_damage_db"] > 0
    report = (run / "report.md").read_text()
    for section in ("## Targets", "Study 1", "Study 2", "Study 3", "Study 4", "Study 5", "Study 6", "resolution: 64"):
        assert section in report, section
    for image in ("curves.png", "ablations.png", "images/versions-oracle-head.png", "images/coarse-head.png"):
        assert (run / image).stat().st_size > 1000, image

    same = compare(results, load_results(run))
    assert same and all(d == 0 for *_, d in same)
    other = json.loads(json.dumps(results))
    other["targets"]["oracle_gain_db"]["mean"] += 1.5
    assert any(k == "targets.oracle_gain_db.mean" and d == pytest.approx(1.5) for k, _, _, d in compare(results, other))
    assert "settings that differ: none" in format_compare(results, results)
    capsys.readouterr()
    assert cli.main(["compare", str(run), str(tmp_path / "missing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_studies_option_runs_only_those(tmp_path) -> None:
    assert cli.main(["run", "--quick", "--studies", "depth", "--out", str(tmp_path), "--name", "d"]) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert set(results["studies"]) == {"ground_truth", "depth"} and results["targets"] == {}
    report = (tmp_path / "d" / "report.md").read_text()
    assert "Study 3" in report and "Study 5" not in report
    with pytest.raises(InvalidInput, match="unknown study"):
        settings_for("quick", studies=("colour",))
    # Study 2 alone generates the multiview views itself (study 1 did not run).
    assert cli.main(["run", "--quick", "--studies", "inconsistency", "--out", str(tmp_path), "--name", "i"]) == 0
    sets = json.loads((tmp_path / "i" / "results.json").read_text())["studies"]["inconsistency"]["sets"]
    assert sets["multiview/render"]["summary"]["inconsistency"]["mean"] > sets["ground truth"]["summary"][
        "inconsistency"]["mean"]
    assert sets["multiview/zero123"]["status"].startswith("n/a: no weights")
