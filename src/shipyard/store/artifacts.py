"""The artifact store: immutable blobs (packed bundles, checkpoints) addressed by their sha256, in
a folder (local, or a shared mount every host sees: `file:///mnt/shared/artifacts`) or in
S3-compatible object storage (`s3://bucket/prefix`). Whatever the backend, a reader never sees half
a blob: folder writes are temp file + rename, S3 objects appear whole, and a remote blob is hashed
while it downloads and only renamed into the local cache when its sha256 matches."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from shipyard.bundle import sha256_file as sha256_of
from shipyard.errors import ConfigError, NotFound, ShipyardError

if TYPE_CHECKING:
    from shipyard.settings import Settings

_CHUNK = 1 << 20
_MISSING = ("404", "NoSuchKey", "NotFound")  # S3 error codes for an absent key


def _key(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ArtifactStore:
    """A folder of blobs. `local()` is the blob itself: nothing to download."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root.resolve()}"

    def path(self, sha256: str) -> Path:
        return self.root / _key(sha256)

    def where(self, sha256: str) -> str:
        """Where the blob lives, for messages and `runs show`."""
        return str(self.path(sha256).resolve())

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self._refresh(sha):
            self._atomic_write(self.path(sha), data)
        return sha

    def put_file(self, src: Path) -> str:
        sha = sha256_of(src)
        if not self._refresh(sha):
            self._atomic_write(self.path(sha), Path(src).read_bytes())
        return sha

    def _refresh(self, sha256: str) -> bool:
        """Mark a blob that is stored again as new (its mtime), so `shipyard gc`'s grace period
        protects it until the reference being written commits. False when it is not there."""
        try:
            os.utime(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    def blobs(self) -> Iterator[tuple[str, int, float]]:
        """Every stored blob: (sha256, size in bytes, when it was last stored)."""
        for p in sorted((self.root / "sha256").glob("*/*")):
            if not p.name.startswith(".") and p.is_file():
                st = p.stat()
                yield p.name, st.st_size, st.st_mtime

    def repair(self, sha256: str, src: Path) -> bool:
        """Make the stored blob match its name again from `src` (whose bytes do): the store keeps
        a blob it already has, so one changed on disk since would otherwise stay. True when the
        store now holds the right bytes."""
        p = self.path(sha256)
        if p.is_file() and sha256_of(p) == sha256:
            return True
        self._atomic_write(p, Path(src).read_bytes())
        return p.is_file() and sha256_of(p) == sha256

    def get_bytes(self, sha256: str, *, verify: bool = True) -> bytes:
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not in the store at {self.root}") from None
        if verify and hashlib.sha256(data).hexdigest() != sha256:
            raise ShipyardError(f"artifact {p} is corrupt: its content does not match its sha256")
        return data

    def local(self, sha256: str) -> Path:
        """A local file holding the blob (not verified here: callers decide what a mismatch
        means). NotFound when the store lacks it."""
        p = self.path(sha256)
        if not p.is_file():
            raise NotFound(f"artifact {sha256} is not in the store at {self.root}")
        return p

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        _atomic_write(dest, data)


class S3ArtifactStore(ArtifactStore):
    """Blobs as objects under `s3://bucket/prefix/sha256/…`, through boto3 (any S3-compatible
    server: set the endpoint). Downloads land in a local cache by sha256, so a restarted replica
    reads them from disk; a download that is cut or corrupt is refused, never cached, and retried."""

    attempts = 3

    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError("artifacts", url, "an S3 store is named s3://BUCKET[/PREFIX]")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint_url = endpoint_url
        self.root = Path(cache_dir)  # the local cache: `path()` is where a blob is cached
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ShipyardError(
                    f"the artifact store {self.url} needs boto3: pip install 'shipyard[s3]'") from None
            # botocore's own retries cover throttling and dropped connections before the body;
            # a body cut half-way is caught by the sha256 check below and retried here
            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def object_key(self, sha256: str) -> str:
        return f"{self.prefix}/{_key(sha256)}" if self.prefix else _key(sha256)

    def where(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(sha256)}"

    def _call(self, what: str, fn: Any, *, missing: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in (missing or _MISSING):
                raise NotFound(f"artifact {kwargs.get('Key')} is not in {self.url}") from None
            if code == "NoSuchBucket":
                raise ShipyardError(f"the artifact store {self.url}: bucket {self.bucket!r} does not exist") from None
            raise ShipyardError(f"{what} on the artifact store {self.url} failed: {code or e}") from None
        except BotoCoreError as e:
            raise ShipyardError(f"{what} on the artifact store {self.url} failed: {e}") from None

    def exists(self, sha256: str) -> bool:
        """False when absent, and also when HEAD is forbidden: without s3:ListBucket, S3 answers
        403 for a missing key, and storing content-addressed bytes again is harmless."""
        try:
            self._call("HEAD", self.client.head_object, missing=_MISSING + ("403", "Forbidden"),
                       Key=self.object_key(sha256))
        except NotFound:
            return False
        return True

    def _put(self, sha256: str, body: bytes | Path) -> None:
        data = body if isinstance(body, bytes) else Path(body).read_bytes()
        import base64

        # the server checks the body against this checksum, so a cut upload is refused, not stored
        digest = base64.b64encode(bytes.fromhex(sha256)).decode()
        self._call("PUT", self.client.put_object, Key=self.object_key(sha256), Body=data,
                   ChecksumSHA256=digest, Metadata={"sha256": sha256})

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self._refresh(sha):
            self._put(sha, data)
        return sha

    def put_file(self, src: Path) -> str:
        sha = sha256_of(src)
        if not self._refresh(sha):
            self._put(sha, Path(src))
        return sha

    def _refresh(self, sha256: str) -> bool:
        if not self.exists(sha256):
            return False
        key = self.object_key(sha256)
        try:  # a copy onto itself renews LastModified (what gc's grace period reads)
            self._call("COPY", self.client.copy_object, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                       Metadata={"sha256": sha256}, MetadataDirective="REPLACE")
        except NotFound:
            return False
        return True

    def blobs(self) -> Iterator[tuple[str, int, float]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/sha256/" if self.prefix else "sha256/")
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"].rsplit("/", 1)[-1], int(obj["Size"]), obj["LastModified"].timestamp()
        except Exception as e:  # noqa: BLE001 - botocore errors: one clear message
            raise ShipyardError(f"listing the artifact store {self.url} failed: {e}") from None

    def repair(self, sha256: str, src: Path) -> bool:
        try:
            head = self._call("HEAD", self.client.head_object, Key=self.object_key(sha256))
        except NotFound:
            head = None
        if head is None or head.get("Metadata", {}).get("sha256") != sha256 \
                or head.get("ContentLength") != Path(src).stat().st_size:
            self._put(sha256, Path(src))
        return True

    def local(self, sha256: str) -> Path:
        p = self.path(sha256)
        if p.is_file():
            if sha256_of(p) == sha256:
                return p
            p.unlink(missing_ok=True)  # a damaged cache entry: fetch it again
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                self._download(sha256, p)
                return p
            except NotFound:
                raise
            except ShipyardError as e:
                last = e
                time.sleep(0.2 * (attempt + 1))
        raise ShipyardError(f"downloading {self.where(sha256)} failed {self.attempts} times; "
                            f"last: {last}") from None

    def _download(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            h = hashlib.sha256()
            from botocore.exceptions import BotoCoreError
            from urllib3.exceptions import HTTPError as Urllib3Error

            with os.fdopen(fd, "wb") as f:
                body = self._call("GET", self.client.get_object, Key=self.object_key(sha256))["Body"]
                try:
                    chunks = body.iter_chunks(_CHUNK)
                    while True:
                        try:
                            chunk = next(chunks, None)
                        except (BotoCoreError, Urllib3Error, ConnectionError) as e:  # cut mid-body
                            raise ShipyardError(f"the download of {self.where(sha256)} was cut: "
                                                f"{type(e).__name__}: {e}") from None
                        if chunk is None:
                            break
                        h.update(chunk)
                        f.write(chunk)  # a full disk is an OSError of its own, not a cut download
                finally:
                    body.close()
                f.flush()
                os.fsync(f.fileno())
            if h.hexdigest() != sha256:
                raise ShipyardError(f"{self.where(sha256)} does not match its sha256 "
                                    f"(got {h.hexdigest()[:12]}…): refused")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, sha256: str, *, verify: bool = True) -> bytes:
        return self.local(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self._call("DELETE", self.client.delete_object, Key=self.object_key(sha256))
        self.path(sha256).unlink(missing_ok=True)


def open_store(settings: Settings) -> ArtifactStore:
    """The store `settings.artifacts` names: a path or file:// URL (a folder), s3://BUCKET/PREFIX,
    or by default HOME/artifacts."""
    url = settings.artifacts
    if not url:
        return ArtifactStore(settings.home / "artifacts")
    if url.startswith(("/", ".")) or "://" not in url:
        return ArtifactStore(Path(url).resolve())
    scheme = urlparse(url).scheme
    if scheme == "s3":
        return S3ArtifactStore(url, settings.home / "cache" / "artifacts", endpoint_url=settings.s3_endpoint_url)
    if scheme == "file":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError("artifacts", url, "a file:// URL names a local path: file:///mnt/shared/artifacts")
        return ArtifactStore(Path(unquote(parsed.path)))
    raise ConfigError("artifacts", url, "use a folder path, file:///PATH or s3://BUCKET/PREFIX")
