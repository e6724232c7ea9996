from .settings import CxrSettings
from .tracking import MlflowTracking

__all__ = ["CxrSettings", "MlflowTracking"]
