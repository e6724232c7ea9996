from .settings import CxrSettings

__all__ = ["CxrSettings"]
