"""NAR writer and validator: exact bytes, hash/size/listing, every malformed-NAR rule, streaming bounds."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from niks3d.nix.errors import InvalidNar, NixFormatError
from niks3d.nix.hashes import format_sha256
from niks3d.nix.nar import MAX_DEPTH, MAX_NAME, MAX_TARGET, NarResult
from niks3d.nix.nar_dump import NarDumper, dump_path
from niks3d.nix.nar_read import NarValidator, validate_nar

# --------------------------------------------------------------------------- an independent NAR oracle


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def s(b: bytes) -> bytes:
    return u64(len(b)) + b + b"\0" * (-len(b) % 8)


MAGIC = s(b"nix-archive-1")


def reg(contents: bytes, executable: bool = False) -> bytes:
    exe = s(b"executable") + s(b"") if executable else b""
    return s(b"(") + s(b"type") + s(b"regular") + exe + s(b"contents") + s(contents) + s(b")")


def link(target: bytes) -> bytes:
    return s(b"(") + s(b"type") + s(b"symlink") + s(b"target") + s(target) + s(b")")


def entry(name: bytes, node: bytes) -> bytes:
    return s(b"entry") + s(b"(") + s(b"name") + s(name) + s(b"node") + node + s(b")")


def directory(*entries: bytes) -> bytes:
    return s(b"(") + s(b"type") + s(b"directory") + b"".join(entries) + s(b")")


# A tree description: bytes (file), ("x", bytes) executable file, ("l", bytes) symlink, dict directory.
Tree = object


def tree_nar(tree: Tree) -> bytes:
    if isinstance(tree, bytes):
        return reg(tree)
    if isinstance(tree, tuple):
        kind, value = tree
        return reg(value, executable=True) if kind == "x" else link(value)
    assert isinstance(tree, dict)
    return directory(*(entry(name, tree_nar(tree[name])) for name in sorted(tree)))


def materialise(tree: Tree, path: bytes) -> None:
    where = Path(os.fsdecode(path))
    if isinstance(tree, bytes):
        where.write_bytes(tree)
    elif isinstance(tree, tuple):
        kind, value = tree
        if kind == "x":
            where.write_bytes(value)
            where.chmod(0o755)
        else:
            where.symlink_to(os.fsdecode(value))
    else:
        assert isinstance(tree, dict)
        where.mkdir()
        for name, child in tree.items():
            materialise(child, path + b"/" + name)


def dump(path: Path, chunk_size: int = 1 << 20) -> tuple[bytes, NarResult]:
    dumper = NarDumper(path, chunk_size=chunk_size)
    data = b"".join(dumper)
    return data, dumper.result


def validate(data: bytes, *cuts: int) -> NarResult:
    validator = NarValidator(listing=True)
    start = 0
    for cut in sorted(cuts):
        validator.feed(data[start:cut])
        start = cut
    validator.feed(data[start:])
    return validator.finish()


# --------------------------------------------------------------------------- writer


def test_regular_file_nar_is_the_documented_120_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello\n")
    data, result = dump(tmp_path / "f")
    assert len(data) == 120
    assert data == MAGIC + reg(b"hello\n")
    assert result.nar_hash == hashlib.sha256(data).digest()
    assert result.nar_size == 120
    assert format_sha256(result.nar_hash) == "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
    assert result.listing_file() == b'{"version":1,"root":{"type":"regular","size":6,"narOffset":96}}'


def test_prototest_tree_gives_the_documented_hash_and_listing_without_nix(tmp_path: Path) -> None:
    store = b"/nix/store/"
    root = bytes(tmp_path) + b"/proto"
    tree = {
        b"bin": {b"hi": ("x", b"#!/bin/sh\necho hi\n")},
        b"share": {
            b"Zeta": {},
            b"alpha": {b"one": b"x"},
            b"ref.txt": b"ref " + store + b"w253jl7q3l5ia8blv4z6y1mkji7hs53l-protodep\n",
            b"empty": b"",
        },
        b"link": ("l", b"bin/hi"),
        b"selfref": ("l", store + b"b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0/share"),
    }
    materialise(tree, root)
    data, result = dump(Path(os.fsdecode(root)))
    assert data == MAGIC + tree_nar(tree)
    assert result.nar_size == 2072
    assert format_sha256(result.nar_hash) == "sha256:0dybv80qwjsrly2j0rffmxic2swb75rf362czjkd6qyjffkr2nwy"
    assert result.listing_file() == PROTOTEST_LISTING


PROTOTEST_LISTING = (
    b'{"version":1,"root":{"type":"directory","entries":{"bin":{"type":"directory","entries":{"hi":{"type":'
    b'"regular","size":18,"executable":true,"narOffset":400}}},"link":{"type":"symlink","target":"bin/hi"},'
    b'"selfref":{"type":"symlink","target":"/nix/store/b3rplkk2fihip23mj9kdvzxdw7zwh64b-prototest-1.0/share"}'
    b',"share":{"type":"directory","entries":{"Zeta":{"type":"directory","entries":{}},"alpha":{"type":'
    b'"directory","entries":{"one":{"type":"regular","size":1,"narOffset":1520}}},"empty":{"type":"regular",'
    b'"size":0,"narOffset":1744},"ref.txt":{"type":"regular","size":57,"narOffset":1928}}}}}}'
)


@pytest.mark.parametrize(
    ("mode", "executable"),
    [(0o644, False), (0o755, True), (0o700, True), (0o100, True), (0o654, False), (0o611, False)],
)
def test_only_the_owner_x_bit_makes_a_file_executable(tmp_path: Path, mode: int, executable: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    path.chmod(mode)
    try:
        data, result = dump(path)
    finally:
        path.chmod(0o644)
    assert data == MAGIC + reg(b"data", executable=executable)
    assert result.listing is not None
    assert result.listing.get("executable", False) is executable


def test_symlink_targets_are_raw_readlink_bytes_not_resolved(tmp_path: Path) -> None:
    tree = {
        b"dangling": ("l", b"../does/not/exist"),
        b"absolute": ("l", b"/etc/passwd"),
        b"latin1": ("l", b"caf\xe9//./x/"),
        b"dir-link": ("l", b"."),
    }
    root = bytes(tmp_path) + b"/t"
    materialise(tree, root)
    data, result = dump(Path(os.fsdecode(root)))
    assert data == MAGIC + tree_nar(tree)
    assert result.listing is not None
    assert result.listing["entries"]["latin1"]["target"].encode("utf-8", "surrogateescape") == b"caf\xe9//./x/"


def test_entries_are_sorted_by_raw_bytes_upper_case_first(tmp_path: Path) -> None:
    names = [b"alpha", b"Zeta", b"\xff", b"a.b", b"a", b"A", b"a-b", b"_", b"0", b"\xc3\xa9"]
    tree = {name: name for name in names}
    root = bytes(tmp_path) + b"/t"
    materialise(tree, root)
    data, result = dump(Path(os.fsdecode(root)))
    assert data == MAGIC + tree_nar(tree)
    order = sorted(names)
    assert order[:3] == [b"0", b"A", b"Zeta"]
    assert result.listing is not None
    assert [n.encode("utf-8", "surrogateescape") for n in result.listing["entries"]] == order


def test_every_listing_offset_points_at_the_file_contents(tmp_path: Path) -> None:
    tree = {b"a": b"x" * 13, b"d": {b"e": ("x", b"exe" * 100), b"f": b""}, b"z": b"12345678"}
    root = bytes(tmp_path) + b"/t"
    materialise(tree, root)
    data, result = dump(Path(os.fsdecode(root)), chunk_size=5)
    assert result.listing is not None
    entries = result.listing["entries"]
    for node, contents in [
        (entries["a"], b"x" * 13),
        (entries["d"]["entries"]["e"], b"exe" * 100),
        (entries["d"]["entries"]["f"], b""),
        (entries["z"], b"12345678"),
    ]:
        offset = node["narOffset"]
        assert data[offset - 8 : offset] == u64(len(contents))
        assert data[offset : offset + node["size"]] == contents


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_unsupported_file_types_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "ok").write_bytes(b"fine")
    odd = root / "odd-thing"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(odd))
        sock.close()
    with pytest.raises(NixFormatError, match=r"odd-thing' has an unsupported type"):
        dump(root)
    with pytest.raises(NixFormatError, match=r"odd-thing' has an unsupported type"):
        dump(odd)


def test_dumper_refuses_trees_deeper_than_the_limit(tmp_path: Path) -> None:
    deep = tmp_path / "t"
    path = deep
    for _ in range(MAX_DEPTH - 1):  # root + 63 directories = 64 nodes deep: allowed
        path.mkdir()
        path = path / "d"
    path.write_bytes(b"leaf")
    data, result = dump(deep)
    assert validate(data) == result
    path.unlink()
    path.mkdir()
    (path / "too-deep").write_bytes(b"leaf")
    with pytest.raises(NixFormatError, match="nested more than 64 levels"):
        dump(deep)


def test_chunks_are_coalesced_to_about_the_chunk_size(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for i in range(300):
        (root / f"small-{i:03}").write_bytes(b"s" * (i % 37))
    (root / "big").write_bytes(os.urandom(200_000))
    chunk_size = 16_384
    dumper = NarDumper(root, chunk_size=chunk_size)
    chunks = list(dumper)
    assert all(type(c) is bytes for c in chunks)
    assert all(len(c) >= chunk_size for c in chunks[:-1])
    assert all(len(c) <= chunk_size + 1024 for c in chunks)
    assert dumper.result.nar_size == sum(map(len, chunks))


def test_result_needs_a_complete_iteration_and_iteration_happens_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    dumper = NarDumper(tmp_path / "f", chunk_size=16)
    chunks = iter(dumper)
    next(chunks)
    with pytest.raises(RuntimeError, match="not been fully iterated"):
        _ = dumper.result
    list(chunks)
    assert dumper.result.nar_size == len(MAGIC + reg(b"x" * 100))
    with pytest.raises(RuntimeError, match="only once"):
        iter(dumper)


def test_dump_path_feeds_the_sink_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(os.urandom(3000))
    got: list[bytes] = []
    result = dump_path(tmp_path / "d", got.append, chunk_size=1000)
    data, reference = dump(tmp_path / "d")
    assert b"".join(got) == data
    assert result == reference
    assert dump_path(tmp_path / "d", listing=False) == NarResult(reference.nar_hash, reference.nar_size, None)


def test_a_large_file_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "sparse"
    with big.open("wb") as f:
        f.truncate(256 << 20)  # sparse: costs no disk
    tracemalloc.start()
    try:
        total = 0
        for chunk in NarDumper(big):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == (256 << 20) + 120 - 8
    assert peak < 8 << 20


# --------------------------------------------------------------------------- validator


def test_validator_accepts_nix_output_and_gives_hash_size_listing() -> None:
    data = MAGIC + directory(entry(b"a", reg(b"abc", executable=True)), entry(b"b", link(b"a")))
    result = validate(data)
    assert result.nar_hash == hashlib.sha256(data).digest()
    assert result.nar_size == len(data)
    assert data.index(b"abc") == 264
    assert result.listing_file() == (
        b'{"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":3,'
        b'"executable":true,"narOffset":264},"b":{"type":"symlink","target":"a"}}}}'
    )
    assert validate_nar(io.BytesIO(data)).listing is None
    assert validate_nar(io.BytesIO(data), listing=True, chunk_size=3) == result


def test_validator_takes_bytearray_and_memoryview_pieces() -> None:
    data = MAGIC + directory(entry(b"f", reg(b"contents!")))
    validator = NarValidator()
    validator.feed(bytearray(data[:30]))
    validator.feed(memoryview(data)[30:77])
    validator.feed(data[77:])
    assert validator.finish().nar_hash == hashlib.sha256(data).digest()


def reject(data: bytes, match: str, offset: int) -> InvalidNar:
    """Feed ``data`` whole, byte by byte and in 7-byte pieces: each must fail with ``match`` at ``offset``."""
    for size in (len(data), 1, 7):
        validator = NarValidator()
        with pytest.raises(InvalidNar, match=match) as info:
            for i in range(0, len(data), size):
                validator.feed(data[i : i + size])
            validator.finish()
        assert info.value.offset == offset, (size, info.value)
        with pytest.raises(InvalidNar):  # it stays failed
            validator.feed(b"\0" * 8)
    return info.value


GOOD = MAGIC + directory(entry(b"a", reg(b"12345")), entry(b"b", link(b"t")))


def test_every_truncation_is_rejected_at_the_end_of_input() -> None:
    for cut in range(len(GOOD)):
        validator = NarValidator()
        validator.feed(GOOD[:cut])
        with pytest.raises(InvalidNar, match="truncated archive: input ends inside") as info:
            validator.finish()
        assert info.value.offset == cut
    assert validate(GOOD).nar_size == len(GOOD)


def test_truncation_inside_file_contents_names_the_file() -> None:
    validator = NarValidator()
    validator.feed(GOOD[: GOOD.index(b"12345") + 2])
    with pytest.raises(InvalidNar, match=r"inside the contents of the file in '/a'"):
        validator.finish()


@pytest.mark.parametrize(
    "magic", [s(b"nix-archive-2"), s(b"nix-archive"), u64(1 << 62), MAGIC[:-1] + b"x", s(b"NIX-ARCHIVE-1")]
)
def test_bad_magic_is_rejected_at_offset_zero(magic: bytes) -> None:
    reject(magic + reg(b""), "doesn't look like a Nix archive", 0)


def test_non_zero_padding_is_rejected_where_it_is() -> None:
    in_tag = MAGIC + s(b"(")[:9] + b"\x01" + s(b"(")[10:] + s(b"type") + s(b"regular")
    reject(in_tag, "non-zero padding after tag '\\('", len(MAGIC) + 9)
    contents = MAGIC + reg(b"abc")
    at = contents.index(b"abc") + 3
    bad = contents[:at] + b"\0\0\x07" + contents[at + 3 :]
    reject(bad, "non-zero padding after the contents in '/'", at)
    named = MAGIC + directory(entry(b"abc", reg(b"")))
    at = named.index(b"abc") + 3
    reject(named[:at] + b"\x01" + named[at + 1 :], "non-zero padding after an entry name", at)


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ((b"b", b"a"), "entries not sorted"),
        ((b"a", b"a"), "duplicate entry"),
        ((b"a", b"B"), "entries not sorted"),
    ],
)
def test_unsorted_and_duplicate_entries_are_rejected(names: tuple[bytes, bytes], problem: str) -> None:
    data = MAGIC + directory(entry(names[0], reg(b"1")), entry(names[1], reg(b"2")))
    second = data.index(s(b"name"), data.index(s(b"name")) + 1) + 16
    reject(data, f"NAR directory is not sorted \\({problem}", second)


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0b"])
def test_invalid_entry_names_are_rejected(name: bytes) -> None:
    data = MAGIC + directory(entry(name, reg(b"")))
    reject(data, "invalid file name", data.index(s(b"name")) + 16)


def test_executable_marker_must_be_empty() -> None:
    data = MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b"executable") + s(b"x") + s(b"contents") + s(b"")
    reject(data + s(b")"), "executable marker has a non-empty value", len(MAGIC) + 16 + 16 + 16 + 24)


def test_trailing_data_is_rejected_in_the_same_or_a_later_chunk() -> None:
    data = MAGIC + reg(b"ok")
    reject(data + b"\0", "trailing data after the end of the archive", len(data))
    validator = NarValidator()
    validator.feed(data)
    assert validator.done
    with pytest.raises(InvalidNar, match="trailing data") as info:
        validator.feed(b"more")
    assert info.value.offset == len(data)


def nested(depth: int) -> bytes:
    node = reg(b"leaf")
    for _ in range(depth - 1):
        node = directory(entry(b"d", node))
    return MAGIC + node


def test_depth_64_is_accepted_and_65_rejected() -> None:
    assert validate(nested(MAX_DEPTH)).nar_size == len(nested(MAX_DEPTH))
    data = nested(MAX_DEPTH + 1)
    deepest = data.index(reg(b"leaf"))
    err = reject(data, "nested more than 64 levels deep", deepest)
    assert "/d/d/d" in str(err)


def test_name_255_is_accepted_and_256_rejected() -> None:
    assert validate(MAGIC + directory(entry(b"n" * MAX_NAME, reg(b""))))
    data = MAGIC + directory(entry(b"n" * (MAX_NAME + 1), reg(b"")))
    reject(
        data,
        "an entry name in '/' is 256 bytes long, more than the limit of 255",
        data.index(s(b"name")) + 16,
    )


def test_target_4095_is_accepted_and_4096_empty_or_nul_rejected() -> None:
    assert validate(MAGIC + link(b"t" * MAX_TARGET))
    offset = len(MAGIC) + 16 + 16 + 16 + 16
    reject(MAGIC + link(b"t" * (MAX_TARGET + 1)), "is 4096 bytes long, more than the limit of 4095", offset)
    reject(MAGIC + link(b""), "invalid symlink target b''", offset)
    reject(MAGIC + link(b"a\0b"), "invalid symlink target", offset)


def test_unknown_node_type_is_rejected() -> None:
    data = MAGIC + s(b"(") + s(b"type") + s(b"fifo") + s(b")")
    reject(data, "unknown file type b'fifo'", len(MAGIC) + 16 + 16)


@pytest.mark.parametrize(
    ("data", "match", "offset"),
    [
        (MAGIC + s(b"[") + s(b"type"), "expected tag '\\(' at the start of a node in '/', got b'\\['", 24),
        (MAGIC + s(b"(") + s(b"kind"), "expected tag 'type'", 40),
        (MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b")"), "expected tag 'contents'", 72),
        (MAGIC + s(b"(") + s(b"type") + s(b"directory") + s(b"entries"), "expected tag 'entry' or '\\)'", 80),
        (MAGIC + s(b"(") + s(b"type") + s(b"symlink") + s(b"name"), "expected tag 'target'", 72),
        (MAGIC + reg(b"")[:-16] + s(b"entry"), "expected tag '\\)' after the contents", 96),
        (MAGIC + s(b"(") + u64(1 << 63), "tag 'type' in '/' is 9223372036854775808 bytes long", 40),
    ],
)
def test_wrong_or_oversized_tags_are_rejected(data: bytes, match: str, offset: int) -> None:
    # Keywords are read a few at a time, so a wrong one right at the end of the input reads as truncation;
    # the filler stands for the rest of the archive.
    reject(data + bytes(64), match, offset)


def test_oversized_tag_is_rejected_without_waiting_for_its_bytes() -> None:
    validator = NarValidator()
    with pytest.raises(InvalidNar, match="is 1099511627776 bytes long, more than the limit of 32"):
        validator.feed(MAGIC + s(b"(") + u64(1 << 40) + bytes(8))


# --------------------------------------------------------------------------- properties

_names = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
_leaves = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.just("x"), st.binary(max_size=40)),
    st.tuples(st.just("l"), st.binary(min_size=1, max_size=60).filter(lambda t: b"\0" not in t)),
)
_trees = st.recursive(_leaves, lambda kids: st.dictionaries(_names, kids, max_size=6), max_leaves=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees, chunk_size=st.integers(1, 700), cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_random_trees_dump_to_the_oracle_and_validate_to_the_same_result(
    tree: Tree, chunk_size: int, cuts: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp) + b"/root"
        materialise(tree, root)
        data, result = dump(Path(os.fsdecode(root)), chunk_size=chunk_size)
    assert data == MAGIC + tree_nar(tree)
    assert result.nar_hash == hashlib.sha256(data).digest()
    assert result.nar_size == len(data)
    assert validate(data, *(c for c in cuts if c <= len(data))) == result
    assert validate(data).listing_file() == result.listing_file()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", MAGIC, MAGIC + s(b"(") + s(b"type")]))
def test_arbitrary_bytes_never_crash_the_validator(data: bytes, prefix: bytes) -> None:
    validator = NarValidator(listing=True)
    try:
        validator.feed(prefix + data)
        validator.finish()
    except InvalidNar as exc:
        assert exc.offset is not None
        assert 0 <= exc.offset <= len(prefix + data)


def test_validator_never_buffers_file_contents() -> None:
    size = 64 << 20
    head = MAGIC + s(b"(") + s(b"type") + s(b"regular") + s(b"contents") + u64(size)
    validator = NarValidator()
    validator.feed(head)
    block = bytes(1 << 20)
    tracemalloc.start()
    try:
        for _ in range(size >> 20):
            validator.feed(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    validator.feed(s(b")"))
    assert validator.finish().nar_size == len(head) + size + 16
    assert peak < 1 << 20


def test_mode_bits_other_than_owner_x_do_not_change_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"same")
    hashes = set()
    for mode in (0o400, 0o444, 0o600, 0o664, 0o646):
        path.chmod(mode)
        hashes.add(dump(path)[1].nar_hash)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert len(hashes) == 1
