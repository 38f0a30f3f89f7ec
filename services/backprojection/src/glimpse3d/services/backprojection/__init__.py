"""Glimpse3D backprojection service."""
