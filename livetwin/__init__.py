"""livetwin: living (Level 4) digital twins. `livetwin.Platform(path)` is the in-process API."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Client", "Platform", "Settings", "__version__"]

if TYPE_CHECKING:
    from livetwin.client import Client
    from livetwin.platform import Platform, Settings


def __getattr__(name: str):
    """Import the platform lazily, so `import livetwin.expr` stays light."""
    if name in ("Platform", "Settings"):
        from livetwin import platform

        return getattr(platform, name)
    if name == "Client":
        from livetwin.client import Client

        return Client
    raise AttributeError(f"module 'livetwin' has no attribute {name!r}")
