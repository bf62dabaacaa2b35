"""The built-in job `import`: imports the files that arrived in a folder (or under an S3
prefix) under a stored mapping and moves each to `done/` (something was stored, or everything
was a duplicate) or `failed/` (the file or the mapping was wrong, or every row was rejected),
with its report beside it as `<name>.report.json`."""

from __future__ import annotations

import fnmatch
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livetwin.errors import LivetwinError
from livetwin.jobs.baseline import check_keys
from livetwin.schedule.functions import RunContext

SETTLE_S = 2.0  # a file modified more recently may still be being written: the next run takes it
ARGS = ("folder", "s3", "mapping", "pattern", "settle_s")


def import_job(
    import_file: Callable[..., dict], s3_client: Callable[[str], Any] | None = None
) -> Callable[[RunContext], dict]:
    """`import` job: args {folder | s3: "s3://bucket/prefix/", mapping, pattern?="*",
    settle_s?}. `import_file(path, mapping, filename=...)` is the platform's entry;
    `s3_client(bucket)` a boto3 client on the deployment's S3 endpoint and credentials."""

    def run(ctx: RunContext) -> dict:
        check_keys(ctx.args, ARGS, "import")
        mapping = ctx.args.get("mapping")
        where = [k for k in ("folder", "s3") if isinstance(ctx.args.get(k), str)]
        if not isinstance(mapping, str) or len(where) != 1:
            raise ValueError(
                "import needs args.mapping (a stored mapping's name) and one of args.folder "
                "(a directory) and args.s3 (s3://bucket/prefix/)"
            )
        pattern = ctx.args.get("pattern", "*")

        def one(path: Path, name: str) -> tuple[dict, bool]:
            try:
                report = import_file(path, mapping, filename=name)
                ok = report["accepted"] or report["duplicates"] or not report["rejected_total"]
            except LivetwinError as exc:
                report, ok = {"file": name, "error": exc.to_dict()}, False
            return report, bool(ok)

        if where == ["folder"]:
            files = _folder(ctx, Path(ctx.args["folder"]), pattern, one)
        else:
            if s3_client is None:
                raise ValueError("this process has no S3 client (pip install 'livetwin[s3]')")
            files = _s3(ctx, ctx.args["s3"], pattern, one, s3_client)
        return {where[0]: ctx.args[where[0]], "files": files}

    return run


def _folder(ctx: RunContext, root: Path, pattern: str, one) -> list[dict]:
    if not root.is_dir():
        raise ValueError(f"args.folder {str(root)!r} is not a directory")
    settle = float(ctx.args.get("settle_s", SETTLE_S))
    now = time.time()
    files = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and not p.name.startswith(".") and now - p.stat().st_mtime >= settle
    )
    done = []
    for path in files:
        report, ok = one(path, path.name)
        target = _free(root / ("done" if ok else "failed"), path.name)
        path.rename(target)
        target.with_name(target.name + ".report.json").write_text(json.dumps(report, indent=2))
        done.append(_logged(ctx, report, str(target)))
    return done


def _free(folder: Path, name: str) -> Path:
    """`folder/name`, or a new name when that is taken."""
    folder.mkdir(exist_ok=True)
    target = folder / name
    if target.exists():
        stem, dot, suffix = name.partition(".")
        target = folder / f"{stem}.{time.time_ns()}{dot}{suffix}"
    return target


def _s3(ctx: RunContext, url: str, pattern: str, one, s3_client) -> list[dict]:
    """The objects directly under the prefix (an object is whole once it is listed)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ValueError(f"args.s3 {url!r} is not s3://bucket/prefix/")
    bucket, _, prefix = url[5:].partition("/")
    client = s3_client(bucket)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            if name and "/" not in name and not name.startswith("."):
                if fnmatch.fnmatchcase(name, pattern):
                    keys.append(item["Key"])
    done = []
    for key in sorted(keys):
        name = key[len(prefix) :]
        with tempfile.TemporaryDirectory(prefix="livetwin-import-") as scratch:
            local = Path(scratch) / name
            client.download_file(bucket, key, str(local))
            report, ok = one(local, name)
        target = f"{prefix}{'done' if ok else 'failed'}/{name}"
        client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": key})
        client.put_object(
            Bucket=bucket, Key=target + ".report.json", Body=json.dumps(report, indent=2).encode()
        )
        client.delete_object(Bucket=bucket, Key=key)
        done.append(_logged(ctx, report, f"s3://{bucket}/{target}"))
    return done


def _logged(ctx: RunContext, report: dict, moved: str) -> dict:
    if "error" in report:
        summary = report["error"]["message"]
    else:
        summary = (
            f"{report['accepted']} accepted, {report['duplicates']} duplicates, "
            f"{report['rejected_total']} rejected"
        )
    ctx.log(f"{report['file']}: {moved.rsplit('/', 2)[-2]} ({summary})")
    return {**{k: v for k, v in report.items() if k != "rejected"}, "moved": moved}
