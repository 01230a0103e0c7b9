"""Fetching an official checkpoint into the cache and verifying it.

A download is checked against the spec's sha256, else the hash prefix in the file name (mmseg and
torchvision files end in ``-<first hex digits of the sha256>.pth``), else the hub's
``X-Linked-Etag`` (the sha256 of an HF LFS file); a file that does not match is not kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import archs
from archs import ArchSpec, Weights
from bench import __version__
from bench.errors import BenchError
from bench.io import ensure_writable_folder
from bench.weights.registry import BROWSER_ONLY, CACHE_ENV, cache_dir, cached_path, download_urls, official

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|bin|safetensors)$")


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the hub's ``X-Linked-Etag`` (an LFS file's sha256) seen on the redirect to the CDN."""

    linked_etag: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_etag = self.linked_etag or headers.get("X-Linked-Etag")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _expected_digest(weights: Weights, url: str, linked_etag: str | None) -> tuple[str | None, str]:
    """(expected sha256 or its prefix, where it comes from)."""
    if weights.sha256:
        return weights.sha256.lower(), "the spec"
    match = _HASH_IN_NAME.search(url)
    if match and not url.startswith("https://huggingface.co/"):
        return match[1], "the file name"
    etag = (linked_etag or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return etag, "the hub's X-Linked-Etag"
    return None, ""


def _download(url: str, dest: Path, weights: Weights, progress: bool) -> str:
    """Stream ``url`` into ``dest`` (via a temporary file), verify it, return its sha256."""
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": f"segbench/{__version__}"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with opener.open(request, timeout=60) as response, open(part, "wb") as out:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            etag = redirects.linked_etag or response.headers.get("X-Linked-Etag")
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and total:
                    print(f"\r  {dest.name}: {done / 2**20:.0f} / {total / 2**20:.0f} MiB", end="", flush=True)
        if progress and total:
            print()
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    expected, origin = _expected_digest(weights, url, etag)
    if expected and not sha.startswith(expected):
        part.unlink(missing_ok=True)
        raise BenchError(
            f"{url}: sha256 {sha[:16]}... does not match {expected[:16]}... from {origin}; the download is damaged "
            "or the file changed upstream (nothing was kept; run the fetch again)"
        )
    os.replace(part, dest)
    return sha


def fetch(spec: ArchSpec | str, dataset: str, *, force: bool = False, progress: bool = True) -> Path:
    """Download the official ``dataset`` checkpoint of ``spec`` into the cache (if not there); its path.

    Args:
        spec: the spec or registered name.
        dataset: protocol dataset name.
        force: download again even when cached.
        progress: print the download progress.
    """
    spec = archs.get_spec(spec) if isinstance(spec, str) else spec
    weights = official(spec, dataset)
    if not force and (path := cached_path(spec, weights)):
        return path
    folder = cache_dir() / spec.name / dataset
    if weights.uri.startswith(BROWSER_ONLY):
        raise BenchError(
            f"the {spec.name} {dataset} checkpoint is on Google Drive ({weights.uri}), which serves it to browsers "
            "only: download it there and pass --weights PATH (it loads through the spec's converter)"
        )
    ensure_writable_folder(folder, what="checkpoint cache", fix=f"set {CACHE_ENV} to a folder you can write")
    errors = []
    for url in download_urls(weights.uri):
        dest = folder / url.rsplit("/", 1)[-1]
        try:
            _download(url, dest, weights, progress)
            return dest
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            if exc.code != 404:
                break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            break
    raise BenchError(
        f"cannot download the {spec.name} {dataset} checkpoint ({'; '.join(errors)}); on a machine without internet "
        f"download it elsewhere and pass --weights PATH, or put it in {folder}/"
    )
