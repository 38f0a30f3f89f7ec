"""``python -m glimpse3d.gateway``: serve the public Glimpse3D API (config from GLIMPSE3D_*)."""

from glimpse3d.gateway.server import main

if __name__ == "__main__":
    main()
