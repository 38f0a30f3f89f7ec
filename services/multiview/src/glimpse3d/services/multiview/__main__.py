"""``python -m glimpse3d.services.multiview``: serve the multiview service (config from GLIMPSE3D_*)."""

from glimpse3d.services.multiview.server import main

if __name__ == "__main__":
    main()
