"""Enhancement rounds scored against ground truth (glimpse3d.research.rounds)."""

from __future__ import annotations

import pytest

from glimpse3d.research.groundtruth import ground_truth
from glimpse3d.research.rounds import run_rounds


def test_an_oracle_round_of_the_far_side_raises_heldout_psnr(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE3D_RESEARCH_CACHE", str(tmp_path))
    scores = run_rounds(ground_truth("ellipsoid", 64), "oracle", 1)
    assert len(scores) == 2 and scores[1]["accepted_fraction"] > 0.3
    assert scores[1]["psnr_mask_db"] > scores[0]["psnr_mask_db"] + 1.0


def test_unknown_feed_is_refused():
    with pytest.raises(ValueError, match="feed must be one of"):
        run_rounds(None, "dreams", 1)  # type: ignore[arg-type]
