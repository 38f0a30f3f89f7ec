"""``python -m glimpse3d.services.reconstruction``: serve the reconstruction service (config from GLIMPSE3D_*)."""

from glimpse3d.services.reconstruction.server import main

if __name__ == "__main__":
    main()
