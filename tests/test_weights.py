"""`weights download` against a local HTTP server serving a checkpoint the test makes."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.classifier import load_classifier
from detector.weights import DownloadError, download_checkpoints
from stream.cli import main
from tests.fixtures.media import TEST_ENCODER


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (as GitHub's release CDN does)."""

    requests_seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        RangeHandler.requests_seen.append(self.headers.get("Range") or "")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path: Path, checkpoint: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "release"
    root.mkdir()
    (root / "final_test_b0").write_bytes(checkpoint.read_bytes())
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests_seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_download_then_load(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    [path] = download_checkpoints(tmp_path / "cache", ["final_test_b0"], base_url=url, progress=False)
    assert path.read_bytes() == (root / "final_test_b0").read_bytes()
    assert load_classifier(path, TEST_ENCODER) is not None
    assert not path.with_name(path.name + ".part").exists()


def test_resume_from_a_partial_file(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    full = (root / "final_test_b0").read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "final_test_b0.part").write_bytes(full[:1000])
    [path] = download_checkpoints(cache, ["final_test_b0"], base_url=url, progress=False)
    assert path.read_bytes() == full
    assert RangeHandler.requests_seen == ["bytes=1000-"]


def test_existing_file_is_not_fetched_again(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    download_checkpoints(tmp_path, ["final_test_b0"], base_url=url, progress=False)
    download_checkpoints(tmp_path, ["final_test_b0"], base_url=url, progress=False)
    assert len(RangeHandler.requests_seen) == 1


def test_http_error_names_the_url(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_checkpoints(tmp_path, ["no_such_checkpoint"], base_url=url, progress=False)


def test_offline_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["weights", "download", "--dir", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "cannot reach" in err and "offline" in err


def test_cli_download(server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = server
    code = main(["weights", "download", "--dir", str(tmp_path), "--base-url", url, "--names", "final_test_b0", "--no-progress"])
    assert code == 0
    assert (tmp_path / "final_test_b0").is_file()
    assert "1 checkpoints" in capsys.readouterr().out


def test_a_download_that_is_not_the_expected_checkpoint_replaces_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    """The release served a b0 checkpoint where a b1 was expected: deleted, the final name never appears."""
    url, _ = server
    dest = tmp_path / "cache"
    with pytest.raises(DownloadError, match="not the expected checkpoint"):
        download_checkpoints(dest, ["final_test_b0"], base_url=url, progress=False, verify=lambda part: load_classifier(part, "tf_efficientnet_b1") and None)
    assert not (dest / "final_test_b0").exists() and not (dest / "final_test_b0.part").exists()
    [path] = download_checkpoints(dest, ["final_test_b0"], base_url=url, progress=False, verify=lambda part: load_classifier(part, TEST_ENCODER) and None)
    assert path.is_file()


def test_a_failed_download_leaves_no_empty_directory(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "a" / "b" / "weights"
    with pytest.raises(DownloadError, match="cannot reach"):
        download_checkpoints(dest, ["final_test_b0"], base_url=f"http://127.0.0.1:{port}", progress=False)
    assert not (tmp_path / "a").exists()


def test_download_and_config_share_one_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.config import DetectorConfig
    from detector.weights import default_cache_dir, download_command

    monkeypatch.setenv("DEEPFAKE_STREAM_WEIGHTS", str(tmp_path / "w"))
    assert DetectorConfig().weights_dir == default_cache_dir() == tmp_path / "w"
    assert download_command(DetectorConfig().weights_dir) == "deepfake-stream weights download"
    assert download_command(tmp_path / "elsewhere", ["x"]) == f"deepfake-stream weights download --dir {tmp_path / 'elsewhere'} --names x"
