"""Released checkpoints by name: downloaded from a local HTTP server, verified, cached, reused."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from dcls_audio.models import released
from dcls_audio.models.checkpoint import resolve_checkpoint_path
from dcls_audio.models.download import DownloadError, download_file

NAME = "convnext_dcls_audio_tiny"
PAYLOAD = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 123, dtype=np.uint8).tobytes()


class Server:
    """Serves ``body`` at every path; ``cut_after`` bytes: announce the full length, send that
    many, then close the connection. ``requests`` counts the GETs."""

    def __init__(self) -> None:
        self.body = PAYLOAD
        self.cut_after: int | None = None
        self.send_length = True  # False: no Content-Length (the body ends with the connection)
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                server.requests += 1
                self.send_response(200)
                if server.send_length:
                    self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                sent = server.body if server.cut_after is None else server.body[: server.cut_after]
                self.wfile.write(sent)
                self.wfile.flush()
                if server.cut_after is not None:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/{NAME}.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local server for the released name, and an empty checkpoint cache (nothing else searched)."""
    srv = Server()
    cache = tmp_path / "cache"
    monkeypatch.setenv(released.CHECKPOINT_DIR_ENV, str(cache))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(released, "checkpoint_dirs", lambda: [cache])
    monkeypatch.setitem(released.RELEASED_CHECKPOINTS, NAME, srv.url)
    monkeypatch.setitem(released.PUBLISHED_CHECKSUMS, NAME, None)
    released._VERIFIED.clear()
    yield srv
    srv.close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_first_use_downloads_records_the_hash_and_second_use_reads_the_cache(server, tmp_path, capsys):
    path = resolve_checkpoint_path(NAME)
    assert path == tmp_path / "cache" / f"{NAME}.pth"
    assert path.read_bytes() == PAYLOAD and server.requests == 1
    recorded = (tmp_path / "cache" / f"{NAME}.pth.sha256").read_text().split()
    assert recorded == [hashlib.sha256(PAYLOAD).hexdigest(), f"{NAME}.pth"]
    assert server.url in capsys.readouterr().err  # says what it downloads, and where to

    assert resolve_checkpoint_path(NAME) == path
    assert server.requests == 1  # the cached file, no request
    assert leftovers(tmp_path / "cache") == [f"{NAME}.pth", f"{NAME}.pth.sha256"]


def test_published_checksum_accepts_the_file(server, monkeypatch):
    monkeypatch.setitem(released.PUBLISHED_CHECKSUMS, NAME, "md5:" + hashlib.md5(PAYLOAD).hexdigest())
    path = resolve_checkpoint_path(NAME, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".sha256").exists()  # a published value is not recorded


def test_wrong_hash_keeps_nothing_and_names_url_hash_and_place(server, tmp_path, monkeypatch):
    wrong = "sha256:" + hashlib.sha256(b"another file").hexdigest()
    monkeypatch.setitem(released.PUBLISHED_CHECKSUMS, NAME, wrong)
    with pytest.raises(DownloadError) as info:
        resolve_checkpoint_path(NAME, progress=False)
    message = str(info.value)
    assert "\n" not in message and "checksum mismatch" in message
    assert server.url in message and wrong in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert str(tmp_path / "cache" / f"{NAME}.pth") in message  # where to put it by hand
    assert leftovers(tmp_path / "cache") == []


def test_cut_connection_leaves_no_partial_file(server, tmp_path):
    server.cut_after = len(PAYLOAD) // 2
    with pytest.raises(DownloadError) as info:
        resolve_checkpoint_path(NAME, progress=False)
    message = str(info.value)
    assert server.url in message and "\n" not in message
    assert f"{len(PAYLOAD)} bytes" in message or "broke" in message
    assert leftovers(tmp_path / "cache") == []  # no partial file, no recorded hash
    server.cut_after = None
    assert resolve_checkpoint_path(NAME, progress=False).read_bytes() == PAYLOAD  # the next try succeeds


def test_later_copies_are_checked_against_the_first_download(server, tmp_path):
    path = resolve_checkpoint_path(NAME, progress=False)
    path.unlink()
    server.body = PAYLOAD[:-1] + b"x"  # the server now sends another file
    with pytest.raises(DownloadError, match="checksum mismatch"):
        resolve_checkpoint_path(NAME, progress=False)
    assert leftovers(tmp_path / "cache") == [f"{NAME}.pth.sha256"]


def test_a_changed_cached_file_is_refused(server):
    path = resolve_checkpoint_path(NAME, progress=False)
    path.write_bytes(b"\0" + PAYLOAD[1:])
    released._VERIFIED.clear()
    with pytest.raises(DownloadError, match=f"{path}: checksum mismatch"):
        resolve_checkpoint_path(NAME)
    assert server.requests == 1


def test_offline_error_is_one_line(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "x.pth", "sha256:ab", progress=False, hint=" Put it at HERE")
    message = str(info.value)
    assert "\n" not in message and url in message and "sha256:ab" in message and message.endswith("HERE")
    assert leftovers(tmp_path) == []


def test_cli_downloads_once_and_models_shows_it(server, tmp_path, capsys):
    from dcls_audio.cli import main

    assert main(["models"]) == 0
    before = capsys.readouterr().out
    assert before.splitlines()[0].split()[:2] == ["model", "description"]
    row = next(line for line in before.splitlines() if line.startswith(NAME))
    assert "not downloaded" in row
    resolve_checkpoint_path(NAME, progress=False)
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert str(tmp_path / "cache" / f"{NAME}.pth") in row


def test_a_first_download_without_a_length_is_refused_and_nothing_is_recorded(server, tmp_path):
    """Without Content-Length a cut body looks whole, and its hash would be trusted from then on."""
    server.send_length, server.cut_after = False, 5000
    with pytest.raises(DownloadError, match="sent no Content-Length"):
        resolve_checkpoint_path(NAME)
    assert leftovers(tmp_path / "cache") == []


def test_a_length_missing_is_fine_when_a_checksum_checks_the_file(server, tmp_path):
    server.send_length = False
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    got = download_file(server.url, tmp_path / "f.pth", f"sha256:{digest}", progress=False)
    assert got == f"sha256:{digest}" and (tmp_path / "f.pth").read_bytes() == PAYLOAD
    server.cut_after = 5000  # cut: the checksum catches it
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(server.url, tmp_path / "g.pth", f"sha256:{digest}", progress=False)
    assert not (tmp_path / "g.pth").exists()


def test_a_folder_s_own_record_never_overrides_the_cache_s(server, tmp_path):
    resolve_checkpoint_path(NAME)  # first download: the cache records the hash
    local = tmp_path / "checkpoints"
    local.mkdir()
    (local / f"{NAME}.pth").write_bytes(b"other weights")
    (local / f"{NAME}.pth.sha256").write_text(hashlib.sha256(b"other weights").hexdigest() + "\n")
    released._VERIFIED.clear()
    with pytest.raises(DownloadError, match=r"checksum mismatch .*recorded in .*cache"):
        released.verify_released(NAME, local / f"{NAME}.pth")
