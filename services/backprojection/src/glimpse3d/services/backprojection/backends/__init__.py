"""The backprojection backends, one package each (registered in the service's pyproject)."""
