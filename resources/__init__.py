from .tracking import MlflowTracking
from .settings import CxrSettings

__all__ = ["CxrSettings", "MlflowTracking"]
