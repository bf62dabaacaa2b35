"""`python -m livetwin.cli`: the same as the `livetwin` command."""

from livetwin.cli import app

app()
