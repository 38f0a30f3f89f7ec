"""Glimpse3D depth service."""
