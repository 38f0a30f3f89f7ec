"""Glimpse3D gateway: the public API."""
