"""The web dashboard: static ES modules served at `/` and `/ui/`, with Plotly.js from the
installed `plotly` package (never copied into the repository)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


class _Static(StaticFiles):
    """Static files that the browser revalidates (ETag) on every load, so upgrades show."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def plotly_js() -> tuple[Path, str] | None:
    """The path of `plotly.min.js` in the installed `plotly` package and its version, if any."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    return (path, plotly.__version__) if path.is_file() else None


def mount(app: FastAPI) -> None:
    """Serve the dashboard: `/` (the page), `/ui/*` (its modules), `/ui/vendor/plotly.min.js`."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.api_route("/ui/vendor/plotly.min.js", methods=["GET", "HEAD"], include_in_schema=False)
    def plotly(request: Request) -> Response:
        found = plotly_js()
        if found is None:
            error = {
                "code": "not_found",
                "message": "charts need Plotly.js, but the 'plotly' package is not installed",
                "field": "plotly",
                "fix": "pip install 'plotly>=5,<7' in livetwin's environment",
            }
            return JSONResponse({"error": error}, status_code=404)
        path, version = found
        headers = {"cache-control": "public, max-age=3600", "etag": f'"plotly-{version}"'}
        if request.headers.get("if-none-match") == headers["etag"]:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type="text/javascript", headers=headers)

    app.mount("/ui", _Static(directory=STATIC), name="ui")
