"""Find or download a weight file: local folder, then cache, then the public URL.

Order of lookup for a file published as ``name``:

1. ``$DEEPLAB_WEIGHTS_DIR/name`` (one folder, or several joined by ``os.pathsep``):
   for machines without internet; never written to.
2. ``$DEEPLAB_CACHE/name`` (default ``~/.cache/deeplab``): earlier downloads.
3. The public URL, downloaded with a progress bar into the cache. Writes are
   atomic (temporary file + rename), so an interrupted download never leaves a
   half file under the real name.

Every file is checked against its SHA-256 before use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A weight file could not be found, downloaded or verified; the message says what to do."""


def cache_dir() -> Path:
    """``$DEEPLAB_CACHE`` or ``~/.cache/deeplab`` (not created here)."""
    env = os.environ.get("DEEPLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deeplab"


def weights_dirs() -> list[Path]:
    """The folders named by ``$DEEPLAB_WEIGHTS_DIR`` (``os.pathsep``-separated), in order."""
    env = os.environ.get("DEEPLAB_WEIGHTS_DIR", "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def find_local(file_name: str) -> Path | None:
    """Where ``file_name`` already is (weights dir first, then cache), or ``None``."""
    for folder in [*weights_dirs(), cache_dir()]:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def fetch(
    url: str,
    file_name: str,
    sha256: str | None,
    *,
    archive_member: str | None = None,
    archive_sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Path to a verified local copy of ``file_name``, downloading ``url`` if needed.

    ``url`` may be ``http(s)://``, ``file://`` or a plain path. With
    ``archive_member``, ``url`` is a zip archive (a wheel is one) and the file is
    that member, extracted into the cache under ``file_name``.
    """
    local = find_local(file_name)
    if local is not None:
        _verify(
            local,
            sha256,
            fix=f"Delete {local} (it is downloaded again on the next run) "
            "or replace it with the published file.",
        )
        return local

    target = cache_dir() / file_name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(
            f"cannot create the cache folder {target.parent} ({e}); "
            "set DEEPLAB_CACHE to a writable folder"
        ) from e

    if archive_member is None:
        _download(url, target, sha256=sha256, progress=progress)
    else:
        # The archive is only a carrier: downloaded, verified, unpacked, then removed
        # (also on failure, so a bad archive is never reused).
        archive = target.parent / (Path(_url_path(url)).name or f"{file_name}.zip")
        try:
            _download(url, archive, sha256=archive_sha256, progress=progress)
            _extract_member(archive, archive_member, target, sha256=sha256)
        finally:
            archive.unlink(missing_ok=True)
    return target


def _url_path(url: str) -> str:
    return urllib.parse.urlparse(url).path if "://" in url else url


def _download(url: str, dest: Path, *, sha256: str | None, progress: bool) -> None:
    """Copy ``url`` to ``dest`` through a temporary file in the same folder, then rename."""
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (user-chosen URL)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise WeightsError(
                    f"could not download {dest.name} from {url} ({reason}). "
                    f"No internet? Copy {dest.name} into a folder and set "
                    "DEEPLAB_WEIGHTS_DIR to that folder."
                ) from e
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                )
                with bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        if sha256 is not None:
            got = sha256_of(tmp)
            if got != sha256:
                raise WeightsError(
                    f"{url} downloaded with SHA-256 {got}, expected {sha256}: the file on "
                    "the server changed or the download was damaged. Nothing was saved; "
                    "try again, or place a verified copy in DEEPLAB_WEIGHTS_DIR."
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _extract_member(archive: Path, member: str, dest: Path, *, sha256: str | None) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        _verify(
            tmp,
            sha256,
            fix=f"{member} inside {archive.name} is not the expected file; nothing was "
            f"saved. Place a verified {dest.name} in DEEPLAB_WEIGHTS_DIR.",
        )
        os.replace(tmp, dest)
    except KeyError as e:
        raise WeightsError(
            f"{archive.name} has no member {member!r}; the archive's layout changed. "
            f"Place {dest.name} in DEEPLAB_WEIGHTS_DIR instead."
        ) from e
    except zipfile.BadZipFile as e:
        raise WeightsError(
            f"{archive.name} is not a valid zip archive (corrupt download); "
            "run again to download it anew"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def _verify(path: Path, sha256: str | None, *, fix: str) -> None:
    if sha256 is None:
        return
    got = sha256_of(path)
    if got != sha256:
        raise WeightsError(
            f"weight file {path} has SHA-256 {got}, expected {sha256}: it is corrupt or a "
            f"different file. {fix}"
        )
