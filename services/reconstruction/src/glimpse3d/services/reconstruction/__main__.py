"""``python -m glimpse3d.services.reconstruction``: serve Reconstruction (config from GLIMPSE3D_*)."""

from glimpse3d.core.service import main
from glimpse3d.services.reconstruction.server import SERVICE_NAME, build

if __name__ == "__main__":
    main("reconstruction", [SERVICE_NAME], build)
