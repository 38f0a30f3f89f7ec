"""``python -m glimpse3d.services.backprojection``: serve the backprojection service (config from GLIMPSE3D_*)."""

from glimpse3d.services.backprojection.server import main

if __name__ == "__main__":
    main()
