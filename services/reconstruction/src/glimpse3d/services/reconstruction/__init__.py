"""Glimpse3D reconstruction service."""
