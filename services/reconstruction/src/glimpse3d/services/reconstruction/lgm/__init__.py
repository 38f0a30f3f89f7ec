"""The ``lgm`` reconstruction backend (Large Multi-View Gaussian Model): the photo plus three views
at +90/+180/+270 degrees of azimuth -> 3D Gaussians in one forward pass (:mod:`.backend`)."""
