"""Glimpse3D multiview service."""
