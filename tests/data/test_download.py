import hashlib
import re

import pytest

from raw_formats import RangeServer
from sparse_transformer.data.checksums import verify_file
from sparse_transformer.data.download import download, locate_archive
from sparse_transformer.data.errors import DataError

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes


@pytest.fixture(params=[True], ids=["range"])
def server(request):
    with RangeServer(PAYLOAD, honour_range=request.param) as srv:
        yield srv


def md5_check(expected):
    return lambda path: verify_file(path, {"md5": expected}, "download it again")


GOOD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_fetches_and_verifies(server, tmp_path):
    dest = tmp_path / "raw" / "enwik8.zip"
    assert download(server.url, dest, md5_check(GOOD_MD5), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "raw" / "enwik8.zip.part").exists()
    download(server.url, dest, md5_check(GOOD_MD5), progress=False)  # present: nothing fetched
    assert server.sent == len(PAYLOAD)


def test_download_resumes_a_truncated_part(server, tmp_path):
    dest = tmp_path / "enwik8.zip"
    (tmp_path / "enwik8.zip.part").write_bytes(PAYLOAD[:300_000])
    download(server.url, dest, md5_check(GOOD_MD5), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [300_000] and server.sent == len(PAYLOAD) - 300_000


def test_a_complete_part_is_finished_without_refetching(server, tmp_path):
    dest = tmp_path / "enwik8.zip"
    (tmp_path / "enwik8.zip.part").write_bytes(PAYLOAD)
    download(server.url, dest, md5_check(GOOD_MD5), progress=False)
    assert dest.read_bytes() == PAYLOAD and server.sent == 0


@pytest.mark.parametrize("server", [False], indirect=True, ids=["no-range"])
def test_a_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "enwik8.zip"
    (tmp_path / "enwik8.zip.part").write_bytes(b"garbage" * 10)
    download(server.url, dest, md5_check(GOOD_MD5), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "enwik8.zip"
    with pytest.raises(DataError, match=r"enwik8\.zip\.part: md5 is .* but the published file has 0{32}"):
        download(server.url, dest, md5_check("0" * 32), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_message_says_where_to_put_the_file(tmp_path):
    srv = RangeServer(PAYLOAD)
    url = srv.url
    srv.server_close()  # nothing listens on its port now
    dest = tmp_path / "enwik8.zip"
    with pytest.raises(DataError, match=f"cannot reach {re.escape(url)}.*put it at {re.escape(str(dest))}"):
        download(url, dest, progress=False)


def test_locate_archive_accepts_the_file_or_its_folder(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"x")
    assert locate_archive(tmp_path, archive.name, "http://example/", False) == archive
    assert locate_archive(archive, archive.name, "http://example/", False) == archive
    with pytest.raises(DataError, match=r"raw/cifar-10-python.tar.gz does not exist: download http://example/ .*--download"):
        locate_archive(tmp_path / "raw", archive.name, "http://example/", False)


def test_a_file_placed_by_hand_is_checked_like_a_download(tmp_path):
    placed = tmp_path / "enwik8.zip"
    placed.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DataError, match="enwik8.zip: md5 is"):
        md5_check(GOOD_MD5)(placed)
