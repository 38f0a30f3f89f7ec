"""``python -m glimpse3d.services.depth``: serve the Depth service (config from GLIMPSE3D_*)."""

from glimpse3d.core.service import main
from glimpse3d.services.depth.server import SERVICE_NAME, build

if __name__ == "__main__":
    main("depth", [SERVICE_NAME], build)
