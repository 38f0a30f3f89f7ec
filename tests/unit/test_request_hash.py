"""CreateJob's idempotency fingerprint: a reused request_id with another body is refused (ALREADY_EXISTS naming
request_id), so every part of the body that changes the job must change the fingerprint."""

from __future__ import annotations

import hashlib

from glimpse3d.gateway.app import create_request_hash
from glimpse3d.gateway.jobs import ExtraPhoto, JobOptions
from glimpse3d.gateway.store import request_hash

PHOTO, BACK, SIDE = b"photo bytes", b"back bytes", b"side bytes"


def test_extra_photos_and_their_hints_change_the_fingerprint() -> None:
    options = JobOptions()
    plain = create_request_hash(PHOTO, options, "name", None)
    back = create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(BACK, 180.0)])
    assert len({plain, back,
                create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(SIDE, 180.0)]),
                create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(BACK, 90.0)]),
                create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(BACK, 180.0, 20.0)]),
                create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(BACK, 180.0), ExtraPhoto(SIDE)])}) == 6
    assert back == create_request_hash(PHOTO, options, "name", None, [ExtraPhoto(BACK, 180.0)])  # deterministic


def test_requests_without_extra_photos_keep_the_fingerprint_stored_before_them() -> None:
    """Jobs created before extra photos existed stored this fingerprint; a retry of such a request must match."""
    options = JobOptions(seed=3)
    before = request_hash({"image": {"sha256": hashlib.sha256(PHOTO).hexdigest()}, "mask": None,
                           "options": options.to_json(), "display_name": "name"})
    assert create_request_hash(PHOTO, options, "name", None) == before
    assert create_request_hash(PHOTO, options, "name", None, []) == before
