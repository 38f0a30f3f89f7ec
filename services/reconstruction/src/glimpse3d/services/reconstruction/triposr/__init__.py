"""The ``triposr`` reconstruction backend: TripoSR's triplane NeRF converted to Gaussians (:mod:`.backend`)."""
