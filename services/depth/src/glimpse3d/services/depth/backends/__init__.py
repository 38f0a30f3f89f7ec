"""The depth service's backends, one package each (registered in services/depth/pyproject.toml)."""
