"""An app's file area: round trips, the quota, and every way out of the area being refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmasos.system.errors import InvalidRequest, NotFound, PermissionDenied, QuotaExceeded
from llmasos.system.storage.files import FileArea


def snapshot(root: Path) -> set[str]:
    """Everything under root, files and directories, hidden ones included."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def area(tmp_path: Path) -> FileArea:
    return FileArea(tmp_path / "app", max_bytes=None)


def test_root_is_created(tmp_path: Path) -> None:
    area = FileArea(tmp_path / "deep" / "er" / "app")
    assert area.root.is_dir()
    assert area.used_bytes() == 0 and area.list() == []


def test_write_read_list_delete_round_trip(area: FileArea) -> None:
    assert area.write("notes.txt", "héllo") == len("héllo".encode())
    assert area.write("data/raw.bin", b"\x00\x01\x02") == 3
    assert area.read("notes.txt") == "héllo".encode()
    assert area.read_text("notes.txt") == "héllo"
    assert area.read("data/raw.bin") == b"\x00\x01\x02"
    assert area.exists("notes.txt") and area.exists("data") and not area.exists("missing.txt")

    listing = area.list()
    assert [entry["path"] for entry in listing] == ["data/raw.bin", "notes.txt"]
    assert listing[0]["size"] == 3 and listing[1]["size"] == 6
    assert all(isinstance(entry["modified"], float) for entry in listing)
    assert area.used_bytes() == 9

    # Overwrite replaces the content.
    area.write("notes.txt", "bye")
    assert area.read_text("notes.txt") == "bye"

    area.delete("notes.txt")
    assert not area.exists("notes.txt")
    with pytest.raises(NotFound):
        area.read("notes.txt")
    with pytest.raises(NotFound):
        area.delete("notes.txt")
    assert [entry["path"] for entry in area.list()] == ["data/raw.bin"]


def test_nested_dirs_and_prefix_listing(area: FileArea) -> None:
    area.write("a/b/c/deep.txt", "x")
    area.write("a/b/other.txt", "yy")
    area.write("ab.txt", "zzz")
    assert (area.root / "a" / "b" / "c").is_dir()
    assert [e["path"] for e in area.list("a/")] == ["a/b/c/deep.txt", "a/b/other.txt"]
    assert [e["path"] for e in area.list("a")] == ["a/b/c/deep.txt", "a/b/other.txt", "ab.txt"]
    assert [e["path"] for e in area.list("a/b/c")] == ["a/b/c/deep.txt"]
    assert [e["path"] for e in area.list("./a//b/o")] == ["a/b/other.txt"]
    assert area.list("nothing/") == []
    assert area.resolve("a/./b//other.txt") == area.root / "a" / "b" / "other.txt"


def test_missing_and_wrong_kind(area: FileArea) -> None:
    with pytest.raises(NotFound):
        area.read("nope.txt")
    with pytest.raises(NotFound):
        area.read("nope/deeper.txt")
    area.write("dir/file.txt", "x")
    with pytest.raises(InvalidRequest, match="not a file"):
        area.read("dir")
    with pytest.raises(InvalidRequest, match="directory"):
        area.delete("dir")
    with pytest.raises(InvalidRequest, match="directory"):
        area.write("dir", "x")
    with pytest.raises(InvalidRequest, match="is a file, not a directory"):
        area.write("dir/file.txt/inside.txt", "x")
    area.write("latin1.txt", b"\xff\xfe")
    with pytest.raises(InvalidRequest, match="UTF-8"):
        area.read_text("latin1.txt")
    with pytest.raises(InvalidRequest):
        area.write("x.txt", 123)  # type: ignore[arg-type]


def test_quota(tmp_path: Path) -> None:
    area = FileArea(tmp_path / "app", max_bytes=10)
    area.write("a.txt", b"12345")
    area.write("b.txt", b"1234")
    before = snapshot(area.root)
    with pytest.raises(QuotaExceeded, match="quota of 10"):
        area.write("c.txt", b"12")
    with pytest.raises(QuotaExceeded):
        area.write("new/dir/c.txt", b"12")
    assert snapshot(area.root) == before  # nothing left behind, not even the directories
    # Replacing a file only counts the difference.
    area.write("a.txt", b"123456")
    assert area.used_bytes() == 10
    area.delete("b.txt")
    area.write("c.txt", b"1234")
    assert area.used_bytes() == 10


@pytest.mark.parametrize(
    "path",
    [
        "",
        "   ",
        ".",
        "./",
        "a\x00b",
        "a%00b",
        "line\nbreak",
        "/etc/passwd",
        "C:\\x",
        "c:/x",
        "\\\\server\\share",
        "\\windows\\system32",
        "~/x",
        "~root",
        "~root/.ssh/id_rsa",
        "%7e/x",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "a/../b",
        "%2e%2e/x",
        "%2E%2E/x",
        "%252e%252e/x",
        "%25252e%25252e/x",
        "..%2fx",
        "..%252fx",
        "a/%2e%2e/%2e%2e/x",
        "..\\x",
        "a\\..\\..\\x",
        "a\\b",
        "\uff0e\uff0e/x",  # fullwidth dots fold to '..'
        "...",
        "x" * 1025,
        "a/" + "x" * 256,
        "é" * 128,  # 256 bytes in UTF-8
    ],
)
def test_refused_paths(area: FileArea, path: str) -> None:
    with pytest.raises(PermissionDenied, match=r"leaves the app's file area|is not allowed"):
        area.resolve(path)
    # Every operation goes through resolve, and a refused write leaves nothing behind.
    with pytest.raises(PermissionDenied):
        area.write(path, b"data")
    with pytest.raises(PermissionDenied):
        area.read(path)
    with pytest.raises(PermissionDenied):
        area.delete(path)
    with pytest.raises(PermissionDenied):
        area.exists(path)
    assert snapshot(area.root) == set()
    assert not (area.root.parent / "x").exists()


def test_limits_are_inclusive(area: FileArea) -> None:
    name = "x" * 255
    area.write(name, "ok")
    assert area.read_text(name) == "ok"
    long_path = "/".join(["d" * 100] * 9) + "/" + "f" * 115  # exactly 1024 characters
    assert len(long_path) == 1024
    assert area.resolve(long_path) == area.root.joinpath(*long_path.split("/"))


def test_literal_names_that_only_look_encoded(area: FileArea) -> None:
    # Decoding is only for spotting traversal; names are used literally.
    area.write("100%.txt", "a")
    area.write("a%20b.txt", "b")
    area.write("dots..in..name.txt", "c")
    area.write("a/~tilde-inside.txt", "d")
    assert sorted(e["path"] for e in area.list()) == [
        "100%.txt",
        "a%20b.txt",
        "a/~tilde-inside.txt",
        "dots..in..name.txt",
    ]


def test_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    area = FileArea(tmp_path / "app")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, area.root / "link")
    os.symlink(outside / "secret.txt", area.root / "secret-link.txt")

    for path in ["link/secret.txt", "link", "secret-link.txt", "link/new.txt"]:
        with pytest.raises(PermissionDenied, match="symlinks are not allowed"):
            area.resolve(path)
    with pytest.raises(PermissionDenied):
        area.read("link/secret.txt")
    with pytest.raises(PermissionDenied):
        area.read("secret-link.txt")
    with pytest.raises(PermissionDenied):
        area.write("link/new.txt", "pwned")
    with pytest.raises(PermissionDenied):
        area.write("secret-link.txt", "pwned")
    with pytest.raises(PermissionDenied):
        area.delete("secret-link.txt")
    with pytest.raises(PermissionDenied):
        area.list("link/")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    # Symlinks are neither listed nor counted, and what they point to is not walked.
    assert area.list() == [] and area.used_bytes() == 0


def test_symlink_pointing_inside_is_refused_too(area: FileArea) -> None:
    area.write("real/file.txt", "inside")
    os.symlink(area.root / "real", area.root / "alias")
    os.symlink("file.txt", area.root / "real" / "relative-alias.txt")
    for path in ["alias/file.txt", "real/relative-alias.txt"]:
        with pytest.raises(PermissionDenied, match="symlinks are not allowed"):
            area.read(path)
    with pytest.raises(PermissionDenied):
        area.write("alias/new.txt", "x")
    assert not (area.root / "real" / "new.txt").exists()
    assert [e["path"] for e in area.list()] == ["real/file.txt"]


def test_dangling_symlink_is_refused(area: FileArea) -> None:
    os.symlink("/nonexistent/target", area.root / "dangling")
    with pytest.raises(PermissionDenied, match="symlinks are not allowed"):
        area.write("dangling", "x")
    with pytest.raises(PermissionDenied):
        area.exists("dangling")
    assert not Path("/nonexistent/target").exists()


def test_atomic_write_leaves_no_temp_files(area: FileArea) -> None:
    for i in range(5):
        area.write("same.txt", f"version {i}")
    assert snapshot(area.root) == {"same.txt"}
    assert area.read_text("same.txt") == "version 4"


def test_special_files_are_not_read(area: FileArea) -> None:
    # A FIFO would block a naive open() forever; it must be refused at once instead.
    os.mkfifo(area.root / "pipe")
    with pytest.raises(InvalidRequest, match="not a file"):
        area.read("pipe")
    assert area.list() == []
