"""``python -m glimpse3d.services.backprojection``: serve MVCRM (config from GLIMPSE3D_*)."""

from glimpse3d.core.service import main
from glimpse3d.services.backprojection.server import SERVICE_NAME, build

if __name__ == "__main__":
    main("backprojection", [SERVICE_NAME], build)
