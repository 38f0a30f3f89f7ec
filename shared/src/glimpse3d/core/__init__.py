"""Glimpse3D core library shared by the gateway and every service.

Modules that need torch (``glimpse3d.core.render``) import it lazily so that the gateway, which
does not install torch, can use the rest.
"""
