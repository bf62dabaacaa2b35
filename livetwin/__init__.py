"""livetwin: living (Level 4) digital twins."""

__version__ = "0.1.0"
