"""Dataset resolution (cache, mirror, URL with checksum) and loaders."""

from design.data.sources import DataNotFoundError, resolve

__all__ = ["DataNotFoundError", "resolve"]
