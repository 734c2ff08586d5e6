"""Where finished videos go: an S3-compatible bucket (boto3), or a local directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import SkipstepError
from core.settings import Settings


class StorageError(SkipstepError):
    """The video store could not be reached or refused an operation."""


class Storage(Protocol):
    def put(self, key: str, path: Path, content_type: str = "video/mp4") -> int:
        """Store the file under ``key``; returns its size in bytes."""

    def get(self, key: str) -> bytes:
        """The stored object's bytes (input images: small)."""

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix`` (none: nothing to do)."""

    def keys(self, prefix: str) -> list[str]:
        """The keys of the objects under ``prefix``."""

    def presigned_url(self, key: str) -> str | None:
        """A time-limited URL a client can fetch directly, or None if videos are served by the API."""

    def local_path(self, key: str) -> Path:
        """The file of ``key`` on this machine (local storage only)."""

    def check(self) -> None:
        """Raise StorageError unless the store is reachable."""

    def ensure(self) -> None:
        """Create the directory or bucket if it does not exist yet."""


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError("the storage key leaves the storage directory")
        return path

    def put(self, key: str, path: Path, content_type: str = "video/mp4") -> int:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        shutil.copyfile(path, partial)
        partial.replace(target)
        return target.stat().st_size

    def get(self, key: str) -> bytes:
        try:
            return self.local_path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"reading {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.keys(prefix):
            self.delete(key)

    def keys(self, prefix: str) -> list[str]:
        root = self.root.resolve()
        folder = self.local_path(prefix.rpartition("/")[0] or ".")
        if not folder.is_dir():
            return []
        found = (path.relative_to(root).as_posix() for path in folder.rglob("*") if path.is_file())
        return sorted(key for key in found if key.startswith(prefix))

    def presigned_url(self, key: str) -> str | None:
        return None

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError("the storage directory does not exist")

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"the storage directory cannot be created: {exc.strerror}") from exc


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.expires = settings.s3_presign_seconds
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(signature_version="s3v4", connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}),
        )

    def put(self, key: str, path: Path, content_type: str = "video/mp4") -> int:
        try:
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload of {key} to bucket {self.bucket}: {_reason(exc)}") from exc
        except S3UploadFailedError as exc:
            # The server's error answer (NoSuchBucket, SlowDown, ...), which boto3 wraps with the local file's path
            # in the message: the answer's code and message alone.
            answer = exc.__context__
            reason = _reason(answer) if isinstance(answer, ClientError) else "the server refused the upload"
            raise StorageError(f"upload of {key} to bucket {self.bucket}: {reason}") from exc
        return path.stat().st_size

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"reading {key} from bucket {self.bucket}: {_reason(exc)}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"deleting {key} from bucket {self.bucket}: {_reason(exc)}") from exc

    def delete_prefix(self, prefix: str) -> None:
        keys = self.keys(prefix)
        try:
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"deleting {prefix}* from bucket {self.bucket}: {_reason(exc)}") from exc

    def keys(self, prefix: str) -> list[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"listing {prefix}* in bucket {self.bucket}: {_reason(exc)}") from exc

    def presigned_url(self, key: str) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expires
        )

    def local_path(self, key: str) -> Path:
        raise StorageError("S3 storage keeps no local files")

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"bucket {self.bucket}: {_reason(exc)}") from exc

    def ensure(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise StorageError(f"bucket {self.bucket}: {_reason(exc)}") from exc
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except (BotoCoreError, ClientError) as create_exc:
                raise StorageError(f"creating bucket {self.bucket}: {_reason(create_exc)}") from create_exc
        except BotoCoreError as exc:
            raise StorageError(f"bucket {self.bucket}: {_reason(exc)}") from exc


def _reason(exc: BotoCoreError | ClientError) -> str:
    """What went wrong, without endpoint addresses or file paths (messages reach clients and job rows)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')} {error.get('Message', '')}".strip()
    return exc.__class__.__name__


def storage_from(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.videos_dir)


def job_prefixes(job_id: object) -> list[str]:
    """Where a job's objects are stored (every attempt's video, the input image): what expiry deletes."""
    return [f"videos/{job_id}/"]


def input_image_key(job_id: object) -> str:
    """A job's first frame, beside its videos."""
    return f"videos/{job_id}/input.png"


def store_bytes(storage: Storage, key: str, data: bytes, content_type: str) -> int:
    with tempfile.TemporaryDirectory(prefix="skipstep-") as scratch:
        path = Path(scratch) / "object"
        path.write_bytes(data)
        return storage.put(key, path, content_type)


def video_key(job_id: object, attempt: int) -> str:
    """Each attempt stores under its own key, so a worker that lost its claim never overwrites the video of
    the worker that holds it; only the holder's finish publishes its key."""
    return f"videos/{job_id}/{attempt}.mp4"
