"""``python -m glimpse3d.services.diffusion``: serve the diffusion service (config from GLIMPSE3D_*)."""

from glimpse3d.services.diffusion.server import main

if __name__ == "__main__":
    main()
