"""``python -m glimpse3d.services.multiview``: serve the Multiview service (config from GLIMPSE3D_*)."""

from glimpse3d.core.service import main
from glimpse3d.services.multiview.server import SERVICE_NAME, build

if __name__ == "__main__":
    main("multiview", [SERVICE_NAME], build)
