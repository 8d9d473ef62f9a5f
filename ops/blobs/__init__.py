"""Blob storage for input files, output shards, final outputs, adapters and backups.

`open_blobs(url)`: `file:///DIR` (embedded default) or `s3://BUCKET/PREFIX` (AWS, MinIO or any
S3 endpoint through `endpoint_url`). Writes are all-or-nothing: a reader never sees a partial
object under its final key.
"""

from __future__ import annotations

from urllib.parse import urlparse

from ops.blobs.base import BlobNotFound, Blobs, BlobsUnavailable


def open_blobs(url: str, *, endpoint_url: str | None = None) -> Blobs:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from ops.blobs.local import LocalBlobs

        return LocalBlobs(parsed.netloc + parsed.path)
    if parsed.scheme == "s3":
        from ops.blobs.s3 import S3Blobs

        return S3Blobs(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url)
    raise ValueError(f"unsupported blob URL {url!r}: expected file:// or s3://")


__all__ = ["BlobNotFound", "Blobs", "BlobsUnavailable", "open_blobs"]
