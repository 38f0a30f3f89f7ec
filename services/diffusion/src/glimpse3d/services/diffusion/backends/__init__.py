"""The diffusion service's backends, one folder each (registered in the service's pyproject)."""
