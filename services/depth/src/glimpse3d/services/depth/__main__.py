"""``python -m glimpse3d.services.depth``: serve the depth service (config from GLIMPSE3D_*)."""

from glimpse3d.services.depth.server import main

if __name__ == "__main__":
    main()
