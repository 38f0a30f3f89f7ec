"""``python -m glimpse3d.services.diffusion``: serve the Diffusion service (config from GLIMPSE3D_*)."""

from glimpse3d.core.service import main
from glimpse3d.services.diffusion.server import SERVICE_NAME, build

if __name__ == "__main__":
    main("diffusion", [SERVICE_NAME], build)
