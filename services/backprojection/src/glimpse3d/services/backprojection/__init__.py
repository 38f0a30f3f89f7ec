"""Glimpse3D backprojection service: MVCRM, the multi-view consistency refinement module.

Entry points: :func:`.mvcrm.refine` (one round), :func:`.mvcrm.naive_fuse` (the baseline without
trust, anchor or normal terms), :func:`.backends.make_backend` (what the gRPC server uses), and the
contract types in :mod:`.options`.
"""
