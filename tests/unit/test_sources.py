"""Data sources: digits, local folders, local archives, http(s) downloads (a real local
server: plain, resumed, Range ignored, bad checksum, 404) and refused malicious archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import image_folder, make_config
from tlearn import cli, paths
from tlearn.data import sources
from tlearn.errors import DataError
from tlearn.io import read_json
from tlearn.stages import download

LIMITS = sources.ExtractLimits(max_expansion=10, max_bytes=10 ** 9)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fetch(tmp_path: Path, source, sha256=None, limits=LIMITS, into: str = "raw"):
    """``sources.fetch`` into the new folder ``tmp_path/into`` (downloads cached in tmp_path)."""
    target = tmp_path / into
    target.mkdir()
    manifest = sources.fetch(str(source), sha256, target, tmp_path / "downloads", limits)
    return manifest, target


# --- digits ---------------------------------------------------------------------------

def test_digits_stage_writes_1797_pngs_and_manifest(project):
    from sklearn.datasets import load_digits

    (project / "data" / "raw").mkdir(parents=True)
    (project / "data" / "raw" / "stale.txt").write_text("from an earlier run")
    metrics = download.run(make_config({"data.source": "digits"}))
    assert metrics == {"n_files": 1797, "n_classes": 10}

    manifest = read_json(paths.MANIFEST)
    digits = load_digits()
    expected = {str(c): int(n) for c, n in enumerate(np.bincount(digits.target))}
    assert manifest["kind"] == "digits" and manifest["source"] == "digits"
    assert manifest["splits"] is None and manifest["sha256"] is None
    assert manifest["classes"] == [str(d) for d in range(10)]
    assert manifest["counts"] == expected and sum(expected.values()) == 1797
    assert manifest["n_files"] == 1797
    assert not (paths.RAW / "stale.txt").exists()  # the stage replaces data/raw wholesale
    for digit, n in expected.items():
        assert len(list((paths.RAW / digit).glob("*.png"))) == n
    first = Image.open(paths.RAW / str(digits.target[0]) / "digit_0000.png")
    assert first.size == (8, 8) and first.mode == "L"
    assert np.array_equal(np.asarray(first), np.round(digits.images[0] * 255 / 16).astype(np.uint8))


# --- local folders --------------------------------------------------------------------

def test_folder_per_class(tmp_path):
    src = tmp_path / "src"
    made = image_folder(src, {"cat": 4, "dog": 3, "emu": 2})
    (src / "cat" / ".DS_Store").write_bytes(b"junk")
    (src / "dog" / "Thumbs.db").write_bytes(b"junk")
    manifest, raw = fetch(tmp_path, src)
    assert manifest["kind"] == "folder" and manifest["sha256"] is None
    assert manifest["splits"] is None
    assert manifest["classes"] == ["cat", "dog", "emu"]
    assert manifest["counts"] == {"cat": 4, "dog": 3, "emu": 2}
    assert manifest["n_files"] == 9
    assert (manifest["linked"], manifest["copied"], manifest["skipped"]) == (9, 0, {"hidden": 2})
    copied = files_under(raw)
    assert set(copied) == {p.relative_to(src).as_posix() for ps in made.values() for p in ps}
    assert copied["cat/cat_000.png"] == made["cat"][0].read_bytes()
    # hard links: data/raw takes no second copy of the user's images
    assert (raw / "cat/cat_000.png").stat().st_ino == made["cat"][0].stat().st_ino


def test_a_folder_of_symlinks_is_followed_to_its_files(tmp_path):
    """Splits laid out as links (as people and DVC's checkout do): each link to a regular
    file is taken; a broken link and a link to a folder are skipped and counted."""
    store = tmp_path / "store"
    made = image_folder(store, {"cat": 3, "dog": 2})
    links = tmp_path / "links"
    for label, files in made.items():
        (links / "train" / label).mkdir(parents=True)
        for f in files:
            (links / "train" / label / f.name).symlink_to(f)
    (links / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (links / "train" / "loop").symlink_to(links, target_is_directory=True)
    manifest, raw = fetch(tmp_path, links)
    assert manifest["counts"] == {"train": {"cat": 3, "dog": 2}}
    assert manifest["skipped"] == {"broken link": 1, "link to a folder": 1}
    assert (raw / "train/cat/cat_000.png").read_bytes() == made["cat"][0].read_bytes()
    assert not (raw / "train/cat/cat_000.png").is_symlink()


def test_a_folders_fingerprint_changes_with_any_image(tmp_path):
    from tlearn.data import folders

    src = tmp_path / "src"
    made = image_folder(src, {"cat": 2, "dog": 2})
    first = folders.fingerprint(src)
    assert folders.fingerprint(src) == first and len(first) == 64
    (src / "dog" / "extra.png").write_bytes(made["cat"][0].read_bytes())  # added
    added = folders.fingerprint(src)
    made["cat"][1].write_bytes(made["cat"][0].read_bytes())               # changed
    changed = folders.fingerprint(src)
    (src / "dog" / "extra.png").unlink()                                  # removed
    assert len({first, added, changed, folders.fingerprint(src)}) == 4


def test_folder_with_splits_renames_val(tmp_path):
    src = tmp_path / "src"
    image_folder(src / "train", {"a": 5, "b": 4}, seed=1)
    image_folder(src / "val", {"a": 2, "b": 2}, seed=2)
    image_folder(src / "test", {"a": 1, "b": 3}, seed=3)
    manifest, raw = fetch(tmp_path, src)
    assert sorted(p.name for p in raw.iterdir()) == ["test", "train", "validation"]
    assert manifest["splits"] == ["train", "validation", "test"]
    assert manifest["counts"] == {"train": {"a": 5, "b": 4}, "validation": {"a": 2, "b": 2},
                                  "test": {"a": 1, "b": 3}}
    assert manifest["classes"] == ["a", "b"] and manifest["n_files"] == 17


def test_folder_mixing_splits_and_classes_is_refused(tmp_path):
    src = tmp_path / "src"
    image_folder(src / "train", {"a": 2}, seed=1)
    image_folder(src, {"b": 2}, seed=2)
    with pytest.raises(DataError, match=r"mixes split folders with other folders: \['b'\]"):
        fetch(tmp_path, src)


def test_unknown_source_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="data.source: .*nowhere"):
        sources.source_kind(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        fetch(tmp_path, tmp_path / "empty")


# --- local archives -------------------------------------------------------------------

def _dataset(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "build" / "dataset"
    image_folder(root, {"cat": 3, "dog": 2})
    return root, files_under(root)


def _archive(root: Path, out: Path, kind: str) -> Path:
    """Pack ``root`` (as its own top folder) into ``out``; zips get macOS junk as well."""
    if kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(root.rglob("*")):
                zf.write(p, f"{root.name}/{p.relative_to(root).as_posix()}")
            zf.writestr(f"__MACOSX/{root.name}/._cat", b"resource fork")
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz"}[kind]
        with tarfile.open(out, mode) as tf:
            tf.add(root, arcname=root.name)
    return out


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz"])
def test_local_archive_is_extracted_and_unwrapped(tmp_path, kind):
    root, originals = _dataset(tmp_path)
    archive = _archive(root, tmp_path / f"dataset.{kind}", kind)
    manifest, raw = fetch(tmp_path, archive)
    assert files_under(raw) == originals  # the single top folder is lifted, junk dropped
    assert sorted(p.name for p in raw.iterdir()) == ["cat", "dog"]
    assert manifest["kind"] == "archive"
    assert manifest["sha256"] == sha(archive.read_bytes())
    assert manifest["counts"] == {"cat": 3, "dog": 2} and manifest["n_files"] == 5


def test_archive_with_splits_unwraps_top_folder_not_split_folder(tmp_path):
    root = tmp_path / "build" / "flowers"
    image_folder(root / "train", {"a": 3, "b": 3}, seed=1)
    image_folder(root / "val", {"a": 1, "b": 1}, seed=2)
    image_folder(root / "test", {"a": 1, "b": 1}, seed=3)
    manifest, raw = fetch(tmp_path, _archive(root, tmp_path / "flowers.tgz", "tgz"))
    assert sorted(p.name for p in raw.iterdir()) == ["test", "train", "validation"]
    assert manifest["counts"]["validation"] == {"a": 1, "b": 1}


def test_local_archive_checksum(tmp_path):
    root, originals = _dataset(tmp_path)
    archive = _archive(root, tmp_path / "dataset.zip", "zip")
    manifest, raw = fetch(tmp_path, archive, sha256=sha(archive.read_bytes()).upper())
    assert files_under(raw) == originals
    with pytest.raises(DataError, match="data.sha256: .*expected 0{64}"):
        fetch(tmp_path, archive, sha256="0" * 64, into="again")


def test_not_an_archive(tmp_path):
    junk = tmp_path / "data.zip"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataError, match="is not a zip or tar archive"):
        fetch(tmp_path, junk)


@pytest.mark.parametrize("kind", ["tar", "tgz", "zip"])
def test_truncated_or_damaged_archive_is_one_line_error(project, tmp_path, capsys, kind):
    """Regression: a cut-short tar/tgz or a zip with a bad CRC raised a raw traceback."""
    root, _ = _dataset(tmp_path)
    archive = _archive(root, tmp_path / f"dataset.{kind}", kind)
    data = bytearray(archive.read_bytes())
    if kind == "zip":  # flip a byte inside the first member's data: a CRC error
        data[100] ^= 0xFF
    elif kind == "tar":  # cut inside the last member's data (not in the end padding)
        with tarfile.open(archive) as tf:
            last = tf.getmembers()[-1]
        data = data[: last.offset_data + last.size // 2]
    else:
        data = data[: len(data) // 2]
    archive.write_bytes(bytes(data))
    assert cli.main(["download", "-S", f"data.source={archive}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"data.source: {archive} is corrupt or truncated (") and err.count("\n") == 1
    assert not paths.RAW.exists()


def test_tar_ending_with_a_zip_member_is_read_as_tar(tmp_path):
    """Regression: zipfile.is_zipfile also says yes to a tar whose last member is a zip,
    which used to extract only that inner zip."""
    root, originals = _dataset(tmp_path)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("other/x.txt", "not the dataset")
    (root / "dog" / "extra.zip").write_bytes(inner.getvalue())
    archive = _archive(root, tmp_path / "dataset.tar", "tar")
    assert zipfile.is_zipfile(archive)  # the trap
    manifest, raw = fetch(tmp_path, archive)
    assert files_under(raw) == files_under(root)
    assert manifest["counts"] == {"cat": 3, "dog": 3}


# --- http(s) downloads ----------------------------------------------------------------

class Server:
    """A real HTTP server on 127.0.0.1 that supports (or ignores) ``Range: bytes=N-``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many body bytes, then hang up
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = server.files.get(self.path)
                record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
                server.requests.append(record)
                if body is None:
                    record["status"] = 404
                    self.send_error(404)
                    return
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.honour_range:
                    start = int(match[1])
                    if start >= len(body):
                        record["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                chunk = body[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if server.cut_after is not None:
                    chunk = chunk[:server.cut_after]
                # Recorded before sending: the client may check it as soon as it has the body.
                record.update(status=status, sent=len(chunk))
                self.wfile.write(chunk)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.close()


@pytest.fixture
def served_zip(tmp_path, server):
    """A zip archive of a cat/dog dataset big enough that half of it is a real partial."""
    root = tmp_path / "build" / "dataset"
    image_folder(root, {"cat": 6, "dog": 6}, size=(64, 64))  # noise: barely compresses
    archive = _archive(root, tmp_path / "dataset.zip", "zip")
    data = archive.read_bytes()
    server.files["/files/dataset.zip"] = data
    return data, files_under(root)


def test_http_download(tmp_path, server, served_zip):
    data, originals = served_zip
    url = server.url("/files/dataset.zip")
    manifest, raw = fetch(tmp_path, url, sha256=sha(data))
    assert files_under(raw) == originals
    assert manifest["kind"] == "url" and manifest["source"] == url
    assert manifest["sha256"] == sha(data) and manifest["counts"] == {"cat": 6, "dog": 6}
    assert [(r["range"], r["status"], r["sent"]) for r in server.requests] == [(None, 200, len(data))]
    # the verified download is kept: fetching again needs no network
    fetch(tmp_path, url, sha256=sha(data), into="again")
    assert len(server.requests) == 1
    assert not list((tmp_path / "downloads").rglob("*.part"))


def _interrupted(tmp_path, server, url, data) -> Path:
    """A first attempt that the server cuts at half: a DataError and a half ``.part`` file."""
    server.cut_after = len(data) // 2
    with pytest.raises(DataError, match=r"ended early .*rerun to resume"):
        sources.download(url, tmp_path / "downloads", sha(data), timeout=10)
    server.cut_after = None
    (part,) = (tmp_path / "downloads").rglob("*.part")
    assert part.read_bytes() == data[:len(data) // 2]
    return part


def test_http_download_resumes_a_partial_file(tmp_path, server, served_zip):
    data, originals = served_zip
    url = server.url("/files/dataset.zip")
    part = _interrupted(tmp_path, server, url, data)
    half = len(data) // 2
    final = sources.download(url, tmp_path / "downloads", sha(data), timeout=10)
    assert server.requests[-1] == {"path": "/files/dataset.zip", "range": f"bytes={half}-",
                                   "status": 206, "sent": len(data) - half}
    assert sha(final.read_bytes()) == sha(data)
    assert not part.exists()
    # the same state set up by hand: a .part with the first half, then a fetch
    part.write_bytes(data[:half])
    final.unlink()
    manifest, raw = fetch(tmp_path, url, sha256=sha(data), into="again")
    assert server.requests[-1]["range"] == f"bytes={half}-" and server.requests[-1]["status"] == 206
    assert manifest["sha256"] == sha(data) and files_under(raw) == originals


def test_http_download_restarts_when_server_ignores_range(tmp_path, server, served_zip):
    data, originals = served_zip
    url = server.url("/files/dataset.zip")
    part = _interrupted(tmp_path, server, url, data)
    part.write_bytes(b"\xff" * part.stat().st_size)  # would corrupt the file if appended to
    server.honour_range = False
    manifest, raw = fetch(tmp_path, url, sha256=sha(data))
    last = server.requests[-1]
    assert last["range"] is not None and last["status"] == 200 and last["sent"] == len(data)
    assert manifest["sha256"] == sha(data) and files_under(raw) == originals


def test_http_download_of_an_already_complete_partial(tmp_path, server, served_zip):
    """Killed after the last byte but before the rename: the server answers 416."""
    data, originals = served_zip
    url = server.url("/files/dataset.zip")
    part = _interrupted(tmp_path, server, url, data)
    part.write_bytes(data)
    manifest, raw = fetch(tmp_path, url, sha256=sha(data))
    assert server.requests[-1]["range"] == f"bytes={len(data)}-"
    assert server.requests[-1]["status"] == 416
    assert manifest["sha256"] == sha(data) and files_under(raw) == originals


def test_http_checksum_mismatch_deletes_the_download(tmp_path, server, served_zip):
    url = server.url("/files/dataset.zip")
    with pytest.raises(DataError, match=r"^data\.sha256: .*expected 0{64} \(the download was deleted\)"):
        fetch(tmp_path, url, sha256="0" * 64)
    assert [p for p in (tmp_path / "downloads").rglob("*") if p.is_file()] == []
    assert list((tmp_path / "raw").iterdir()) == []


def test_http_404(tmp_path, server):
    with pytest.raises(DataError, match=r"^data\.source: download of .*/missing\.zip failed: HTTP 404"):
        fetch(tmp_path, server.url("/missing.zip"))
    assert server.requests[0]["status"] == 404


def test_two_urls_with_the_same_file_name_do_not_share_the_cache(tmp_path, server):
    """Regression: the cache was keyed by file name only, so without a sha256 a new URL
    ending in the same name silently reused the old data."""
    for version, n in (("v1", 2), ("v2", 3)):
        root = tmp_path / "build" / version / "dataset"
        image_folder(root, {"cat": n, "dog": n}, seed=n)
        server.files[f"/{version}/data.zip"] = _archive(root, tmp_path / f"{version}.zip", "zip").read_bytes()
    first = sources.download(server.url("/v1/data.zip"), tmp_path / "downloads", None)
    second = sources.download(server.url("/v2/data.zip"), tmp_path / "downloads", None)
    assert first.read_bytes() == server.files["/v1/data.zip"]
    assert second.read_bytes() == server.files["/v2/data.zip"]


# --- malicious archives ---------------------------------------------------------------

GOOD = b"\x89PNG fine"


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        good = tarfile.TarInfo("cat/ok.png")
        good.size = len(GOOD)
        tf.addfile(good, io.BytesIO(GOOD))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tar_member(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info


def _zip(path: Path, *members: tuple[zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/ok.png", GOOD)
        for info, data in members:
            zf.writestr(info, data)
    return path


def _zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (0o120777 << 16)
    return info


@pytest.fixture
def box(tmp_path):
    """``box/target`` is where extraction goes; ``box`` must end up holding nothing else."""
    target = tmp_path / "box" / "target"
    target.mkdir(parents=True)
    return target


def _outside(box: Path) -> str:
    return str(box.parent / "evil.txt")


MALICIOUS = {
    "tar-absolute": lambda p, box: _tar(p, (_tar_member(_outside(box)), b"x")),
    "tar-dotdot": lambda p, box: _tar(p, (_tar_member("../evil.txt"), b"x")),
    "tar-nested-dotdot": lambda p, box: _tar(p, (_tar_member("cat/../../evil.txt"), b"x")),
    "tar-symlink": lambda p, box: _tar(p, (_tar_member("cat/link.png", tarfile.SYMTYPE, "../../evil.txt"), None)),
    "tar-symlink-absolute": lambda p, box: _tar(p, (_tar_member("cat/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)),
    "tar-hardlink": lambda p, box: _tar(p, (_tar_member("cat/hard.png", tarfile.LNKTYPE, "/etc/passwd"), None)),
    "tar-fifo": lambda p, box: _tar(p, (_tar_member("cat/fifo", tarfile.FIFOTYPE), None)),
    "tar-chardev": lambda p, box: _tar(p, (_tar_member("cat/null", tarfile.CHRTYPE), None)),
    "tar-blockdev": lambda p, box: _tar(p, (_tar_member("cat/sda", tarfile.BLKTYPE), None)),
    "tgz-dotdot": lambda p, box: _tar(p, (_tar_member("../evil.txt"), b"x"), mode="w:gz"),
    "zip-absolute": lambda p, box: _zip(p, (zipfile.ZipInfo(_outside(box)), b"x")),
    "zip-dotdot": lambda p, box: _zip(p, (zipfile.ZipInfo("../evil.txt"), b"x")),
    "zip-backslash-dotdot": lambda p, box: _zip(p, (zipfile.ZipInfo("..\\evil.txt"), b"x")),
    "zip-drive": lambda p, box: _zip(p, (zipfile.ZipInfo("C:/evil.txt"), b"x")),
    "zip-symlink": lambda p, box: _zip(p, (_zip_symlink("cat/link.png", "../../evil.txt"), b"../../evil.txt")),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_refused_and_nothing_written(tmp_path, box, case):
    archive = MALICIOUS[case](tmp_path / f"evil.{'zip' if case.startswith('zip') else 'tar'}", box)
    with pytest.raises(DataError, match=r"^data\.source: .*evil\.(zip|tar) has (an entry|a link or special file)") as info:
        sources.extract(archive, box, LIMITS)
    assert "\n" not in str(info.value)
    assert list(box.iterdir()) == []  # not even the good member: checks come first
    assert [p.name for p in box.parent.iterdir()] == ["target"]
    assert not Path(_outside(box)).exists()


def test_malicious_archive_through_the_command_leaves_no_raw(project, tmp_path, capsys):
    archive = MALICIOUS["tar-dotdot"](tmp_path / "evil.tar", project / "data" / "raw")
    assert cli.main(["download", "-S", f"data.source={archive}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"data.source: {archive} has an entry that escapes the target: '../evil.txt'"
    assert not paths.RAW.exists()
    assert [p for p in (project / "data").rglob("*") if p.is_file()] == []
    assert not (project / "data" / "evil.txt").exists() and not (project / "evil.txt").exists()


def _zeros_zip(path: Path, n_bytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("cat/zeros.png", bytes(n_bytes))
    return path


def test_zip_bomb_refused_by_expansion_ratio(tmp_path, box):
    archive = _zeros_zip(tmp_path / "bomb.zip", 4 * 1024 * 1024)
    assert archive.stat().st_size < 50_000  # ratio > 80
    with pytest.raises(DataError, match="decompression bomb"):
        sources.extract(archive, box, sources.ExtractLimits(max_expansion=10, max_bytes=10 ** 9))
    assert list(box.iterdir()) == []
    # a generous ratio lets the very same archive through
    sources.extract(archive, box, sources.ExtractLimits(max_expansion=1000, max_bytes=10 ** 9))
    assert (box / "cat" / "zeros.png").stat().st_size == 4 * 1024 * 1024


def test_tgz_bomb_refused_by_expansion_ratio(tmp_path, box):
    info = _tar_member("cat/zeros.png")
    archive = _tar(tmp_path / "bomb.tgz", (info, bytes(4 * 1024 * 1024)), mode="w:gz")
    with pytest.raises(DataError, match="expands past .* bytes"):
        sources.extract(archive, box, sources.ExtractLimits(max_expansion=10, max_bytes=10 ** 9))
    assert list(box.iterdir()) == []


def test_max_bytes_cap(tmp_path, box):
    data = np.random.default_rng(0).bytes(300_000)  # incompressible: the ratio is about 1
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/big.png", data)
    with pytest.raises(DataError, match="expands past 200,000 bytes"):
        sources.extract(archive, box, sources.ExtractLimits(max_expansion=100, max_bytes=200_000))
    assert list(box.iterdir()) == []
    sources.extract(archive, box, sources.ExtractLimits(max_expansion=100, max_bytes=400_000))
    assert (box / "cat" / "big.png").read_bytes() == data
