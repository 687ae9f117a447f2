"""Download, cache and local-folder lookup of weight files, against a server on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from deeplab.weights import download
from deeplab.weights.download import WeightsError, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several progress-bar chunks


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh cache and weights folders; nothing from the developer's machine leaks in."""
    cache, local = tmp_path / "cache", tmp_path / "local"
    local.mkdir()
    monkeypatch.setenv("DEEPLAB_CACHE", str(cache))
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(local))
    return cache, local


@pytest.fixture
def server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (base url, log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):  # keep test output quiet, remember the paths
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_downloads_into_cache_once_and_verifies(env, server):
    cache, _ = env
    base, root, requests = server
    (root / "w.bin").write_bytes(PAYLOAD)
    path = fetch(f"{base}/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    assert path == cache / "w.bin"
    assert path.read_bytes() == PAYLOAD
    assert list(cache.glob("*.part")) == []  # the temporary file was renamed, not left behind
    fetch(f"{base}/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    assert len(requests) == 1  # second call served from the cache


def test_local_weights_dir_is_used_before_any_download(env):
    _, local = env
    (local / "w.bin").write_bytes(PAYLOAD)
    # The URL is unreachable: success proves no download was attempted.
    path = fetch("http://127.0.0.1:9/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    assert path == local / "w.bin"


def test_wrong_hash_on_download_saves_nothing_and_says_so(env, server):
    cache, _ = env
    base, root, _ = server
    (root / "w.bin").write_bytes(PAYLOAD)
    with pytest.raises(WeightsError, match=r"expected 0{64}.*DEEPLAB_WEIGHTS_DIR"):
        fetch(f"{base}/w.bin", "w.bin", "0" * 64, progress=False)
    assert not (cache / "w.bin").exists()
    assert list(cache.iterdir()) == []


def test_corrupt_local_file_names_the_file_and_the_fix(env):
    _, local = env
    bad = local / "w.bin"
    bad.write_bytes(PAYLOAD[:-1])
    with pytest.raises(WeightsError) as err:
        fetch("http://127.0.0.1:9/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    assert str(bad) in str(err.value) and "Delete" in str(err.value)


def test_no_network_error_points_at_weights_dir(env):
    with pytest.raises(WeightsError) as err:
        # Port 9 (discard) on loopback is closed: connection refused, like an offline machine.
        fetch("http://127.0.0.1:9/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    msg = str(err.value)
    assert "http://127.0.0.1:9/w.bin" in msg and "DEEPLAB_WEIGHTS_DIR" in msg and "w.bin" in msg


def test_http_404_is_reported_with_url(env, server):
    base, _, _ = server
    with pytest.raises(WeightsError, match="missing.bin"):
        fetch(f"{base}/missing.bin", "missing.bin", None, progress=False)


def test_plain_path_and_file_url(env, tmp_path):
    cache, _ = env
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert fetch(str(src), "a.bin", sha(PAYLOAD), progress=False).read_bytes() == PAYLOAD
    assert fetch(src.as_uri(), "b.bin", sha(PAYLOAD), progress=False) == cache / "b.bin"


def test_archive_member_is_extracted_and_archive_removed(env, server):
    cache, _ = env
    base, root, _ = server
    with zipfile.ZipFile(root / "pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("pkg/weights/model.pt", PAYLOAD)
        zf.writestr("pkg/__init__.py", "")
    archive_sha = sha((root / "pkg-1.0-py3-none-any.whl").read_bytes())
    path = fetch(
        f"{base}/pkg-1.0-py3-none-any.whl",
        "model.pt",
        sha(PAYLOAD),
        archive_member="pkg/weights/model.pt",
        archive_sha256=archive_sha,
        progress=False,
    )
    assert path == cache / "model.pt" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["model.pt"]


def test_archive_without_member_or_wrong_archive_hash(env, server):
    base, root, _ = server
    with zipfile.ZipFile(root / "a.zip", "w") as zf:
        zf.writestr("other.pt", PAYLOAD)
    with pytest.raises(WeightsError, match="no member 'pkg/model.pt'"):
        fetch(f"{base}/a.zip", "m.pt", sha(PAYLOAD), archive_member="pkg/model.pt", progress=False)
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch(
            f"{base}/a.zip",
            "n.pt",
            sha(PAYLOAD),
            archive_member="other.pt",
            archive_sha256="f" * 64,
            progress=False,
        )


def test_interrupted_download_leaves_no_file(env, server, monkeypatch):
    cache, _ = env
    base, root, _ = server
    (root / "w.bin").write_bytes(PAYLOAD)

    def broken_sha(path):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the transfer

    monkeypatch.setattr(download, "sha256_of", broken_sha)
    with pytest.raises(KeyboardInterrupt):
        fetch(f"{base}/w.bin", "w.bin", sha(PAYLOAD), progress=False)
    assert list(cache.iterdir()) == []


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPLAB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.cache_dir() == Path(tmp_path) / ".cache" / "deeplab"


def test_weights_dirs_accepts_several_folders(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    (b / "x.bin").write_bytes(b"x")
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", f"{a}:{b}")
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path / "cache"))
    assert download.find_local("x.bin") == b / "x.bin"
