"""Blobs in S3 through boto3: the same code for AWS, MinIO or a test endpoint (`endpoint_url`).

A PUT is atomic in S3, so a partial object is never visible; large concatenations go through
a multipart upload that is only completed (published) after every part is in, and aborted
otherwise. botocore's standard retry mode retries throttling and connection errors with backoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from ops.blobs.base import BlobNotFound, Blobs, BlobsUnavailable

PART_SIZE = 8 * 1024 * 1024  # S3's minimum part size is 5 MiB


class S3Blobs(Blobs):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        if not bucket:
            raise ValueError("s3 blob URL needs a bucket: s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=5, read_timeout=30),
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (MinIO and test endpoints start empty)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _call(self, fn, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except EndpointConnectionError as exc:
            raise BlobsUnavailable(f"S3 endpoint unreachable: {exc}") from exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise BlobNotFound(kwargs.get("Key", "")) from None
            raise
        except BotoCoreError as exc:
            raise BlobsUnavailable(f"S3 request failed: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Key=self._key(key), Body=data)

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> int:
        buffer = bytearray()
        parts: list[dict[str, object]] = []
        upload_id: str | None = None
        total = 0
        try:
            for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                if len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self._call(
                            self.client.create_multipart_upload, Key=self._key(key)
                        )["UploadId"]
                    parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
                    buffer.clear()
            if upload_id is None:
                self.put(key, bytes(buffer))
                return total
            if buffer:
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            self._call(
                self.client.complete_multipart_upload, Key=self._key(key), UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            if upload_id is not None:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
                )
            raise
        return total

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, object]:
        resp = self._call(
            self.client.upload_part, Key=self._key(key), UploadId=upload_id, PartNumber=number,
            Body=data,
        )
        return {"ETag": resp["ETag"], "PartNumber": number}

    def get(self, key: str) -> bytes:
        return self._call(self.client.get_object, Key=self._key(key))["Body"].read()

    def iter_lines(self, key: str) -> Iterator[bytes]:
        body = self._call(self.client.get_object, Key=self._key(key))["Body"]
        yield from body.iter_lines()

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Key=self._key(key))
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        except EndpointConnectionError as exc:
            raise BlobsUnavailable(f"S3 endpoint unreachable: {exc}") from exc
        return sorted(keys)

    def size(self, key: str) -> int:
        return int(self._call(self.client.head_object, Key=self._key(key))["ContentLength"])
