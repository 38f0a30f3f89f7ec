"""Glimpse3D backprojection service: MVCRM, the multi-view consistency refinement module.

:mod:`.api` holds the contract types and the backend base class, :mod:`.mvcrm` the algorithm
(:func:`.mvcrm.refine`, one round; :func:`.mvcrm.naive_fuse`, the baseline), :mod:`.backends` the
``mvcrm`` and ``triton`` backends.
"""
