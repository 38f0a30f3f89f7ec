"""The multiview backends, one folder each (registered in the pyproject)."""
