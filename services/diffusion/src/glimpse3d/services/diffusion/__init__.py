"""Glimpse3D diffusion service."""
