"""Client-frame decoding errors and video sources."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polypstream import capture
from polypstream.capture import (
    ImageSequenceSource,
    InvalidFrameError,
    PixelFormat,
    SourceError,
    VideoSource,
    count_scan_markers,
    decode_encoded,
    decode_raw,
    is_live,
    open_source,
)
from tests.conftest import square_image, write_clip


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_jpeg_and_png_decode_to_bgr() -> None:
    image = square_image()
    decoded, size = decode_encoded(jpeg(image))
    assert decoded.shape == image.shape and size == (image.shape[1], image.shape[0])
    png = cv2.imencode(".png", image)[1].tobytes()
    assert np.array_equal(decode_encoded(png)[0], image)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty frame"),
        (b"hello, not an image", "not a JPEG or PNG"),
        (jpeg(square_image())[:200], "truncated JPEG"),
        (cv2.imencode(".png", square_image())[1].tobytes()[:60] + b"\x00" * 40, "corrupt PNG"),
    ],
)
def test_bad_encoded_frames_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(InvalidFrameError, match=message):
        decode_encoded(data)


def test_huge_png_is_refused_from_its_header() -> None:
    png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    with pytest.raises(InvalidFrameError, match="exceeds the limit"):
        decode_encoded(png, max_pixels=1000)


def test_jpeg_size_comes_from_the_header() -> None:
    data = jpeg(square_image(96, 80))
    assert capture.jpeg_size(data) == (96, 80)
    with pytest.raises(InvalidFrameError, match="no frame header"):
        capture.jpeg_size(data[:2] + b"\xff\xda" + data[2:])  # image data before the frame header


def test_huge_jpeg_is_refused_from_its_header_before_decoding() -> None:
    # Given a JPEG whose frame header claims 60000×60000 pixels but holds no image data
    header = b"\xff\xd8\xff\xc0\x00\x11\x08" + (60000).to_bytes(2, "big") * 2 + b"\x03" + b"\x01\x22\x00" * 3
    # then it is refused for its size (decoding it would fail as corrupt, after allocating gigabytes)
    with pytest.raises(InvalidFrameError, match="60000x60000 exceeds the limit"):
        decode_encoded(header + b"\xff\xd9")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0xE0, 0xEF), st.binary(max_size=64)), max_size=4), st.integers(0, 10_000))
def test_jpeg_headers_are_read_past_any_segments_and_broken_ones_say_what_is_wrong(
    segments: list[tuple[int, bytes]], cut: int
) -> None:
    whole = jpeg(square_image(96, 80))
    # Given application segments of any content between the start marker and the frame header
    extra = b"".join(bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body for marker, body in segments)
    image, size = decode_encoded(whole[:2] + extra + whole[2:], min_size=(16, 16))
    # then the size still comes from the frame header, and the decode matches it
    assert size == (96, 80) and image.shape == (20, 24, 3)  # decoded at 1/4
    # and the same JPEG cut anywhere (and closed again) decodes or is refused with a reason
    with contextlib.suppress(InvalidFrameError):
        decode_encoded(whole[: cut % len(whole)] + b"\xff\xd9", min_size=(16, 16))


@pytest.mark.parametrize(
    ("size", "min_size", "decoded"),
    [
        ((720, 576), (160, 160), (360, 288)),  # 1/2: 1/4 would be 180×144, under 160 high
        ((1920, 1072), (160, 160), (480, 268)),  # 1/4
        ((1920, 1072), (352, 352), (960, 536)),  # 1/2
        ((300, 200), (160, 160), (300, 200)),  # any reduction would be too small
        ((720, 576), None, (720, 576)),  # in full when no size is asked for
    ],
)
def test_jpeg_decodes_no_larger_than_asked_and_reports_its_own_size(
    size: tuple[int, int], min_size: tuple[int, int] | None, decoded: tuple[int, int]
) -> None:
    image, reported = decode_encoded(jpeg(square_image(*size)), min_size=min_size)
    assert (image.shape[1], image.shape[0]) == decoded
    assert reported == size


def test_raw_pixels_in_every_format() -> None:
    bgr = square_image(8, 6)
    assert np.array_equal(decode_raw(bgr.tobytes(), 8, 6, PixelFormat.BGR8), bgr)
    rgb = bgr[..., ::-1].copy()
    assert np.array_equal(decode_raw(rgb.tobytes(), 8, 6, PixelFormat.RGB8), bgr)
    gray = bgr[..., 0].copy()
    assert decode_raw(gray.tobytes(), 8, 6, PixelFormat.GRAY8).shape == (6, 8, 3)


@pytest.mark.parametrize(
    ("data", "width", "height", "fmt", "message"),
    [
        (b"\x00" * 10, 2, 2, PixelFormat.BGR8, "needs 12 bytes, got 10"),
        (b"\x00" * 13, 2, 2, PixelFormat.BGR8, "needs 12 bytes, got 13"),
        (b"", 0, 5, PixelFormat.BGR8, "zero size"),
        (b"\x00" * 12, 2, 2, None, "unknown or unspecified pixel format"),
        (b"", 5000, 5000, PixelFormat.GRAY8, "exceeds the limit"),
    ],
)
def test_bad_raw_frames_say_what_is_wrong(
    data: bytes, width: int, height: int, fmt: PixelFormat | None, message: str
) -> None:
    with pytest.raises(InvalidFrameError, match=message):
        decode_raw(data, width, height, fmt, max_pixels=4096 * 4096)


def test_video_file_source_reads_every_frame(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10)
    source = VideoSource(str(clip))
    frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (80, 96, 3)
    assert (source.fps, source.frame_rate) == (10.0, 10.0)  # the rate the alert rule is scaled to
    assert frames[5].pts_s == pytest.approx(0.5)


def test_missing_and_undecodable_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        VideoSource(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        VideoSource(str(junk))


def test_live_uris() -> None:
    assert is_live("rtsp://host/stream") and is_live("http://host/x.mjpg") and is_live("0")
    assert not is_live("video.avi") and not is_live("file:///data/video.avi")


def test_a_folder_of_images_plays_as_a_sequence_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "kvasir" / "images"
    folder.mkdir(parents=True)
    for name, width in (("b.png", 40), ("a.jpg", 32), ("c.png", 48)):
        cv2.imwrite(str(folder / name), square_image(width, 24, (2, 2, 8, 8)))
    (folder / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path / "kvasir"))  # the Kvasir-SEG layout: images/ inside
    assert isinstance(source, ImageSequenceSource)
    frames = list(source)
    assert [f.image.shape[1] for f in frames] == [32, 40, 48]  # a, b, c; sizes may change
    assert [f.index for f in frames] == [0, 1, 2] and frames[1].pts_s == pytest.approx(1 / 25)


def test_an_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


def test_realtime_pacing_follows_the_files_frame_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=10, fps=10)
    # A fake clock that only sleeping moves: decoding takes no time on it.
    clock = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(capture.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(capture.time, "sleep", sleep)
    frames = list(VideoSource(str(clip), realtime=True))
    assert len(frames) == 10
    assert slept == pytest.approx([0.1] * 9)  # frame i is handed out i/10 s after the start
    slept.clear()
    assert len(list(VideoSource(str(clip), realtime=False))) == 10 and slept == []  # fast: no waiting


def progressive(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()


def with_repeated_last_scan(data: bytes, times: int) -> bytes:
    """A crafted JPEG: its last (refinement) scan repeated, as a decoder-pinning attack does."""
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * times + b"\xff\xd9"


def test_a_progressive_jpeg_decodes_with_its_size_from_the_header() -> None:
    data = progressive(square_image(96, 80))
    assert data.count(b"\xff\xda") == 10  # libjpeg's standard progression for colour
    assert capture.jpeg_size(data) == (96, 80)
    image, size = decode_encoded(data, min_size=(16, 16))
    assert size == (96, 80) and image.shape == (20, 24, 3)  # decoded at 1/4


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    crafted = with_repeated_last_scan(progressive(square_image(96, 80)), 2500)

    def no_decoding(*args: object) -> None:
        raise AssertionError("imdecode must not be reached")

    monkeypatch.setattr(capture.cv2, "imdecode", no_decoding)
    with pytest.raises(InvalidFrameError, match=r"^JPEG 96x80 has 2510 scans; at most 64 are decoded at this size$"):
        decode_encoded(crafted)


def test_the_scan_limit_shrinks_with_the_image_so_the_decode_cost_stays_bounded() -> None:
    # 16 x max_pixels scan-pixels: a frame of a quarter of the limit may have 64 scans,
    # one of half the limit 32 (a standard progressive JPEG has 10).
    data = with_repeated_last_scan(progressive(square_image(100, 100)), 23)  # 33 scans
    assert data.count(b"\xff\xda") == 33
    decode_encoded(data, max_pixels=40_000)  # 100x100 is a quarter: up to 64 scans
    with pytest.raises(InvalidFrameError, match="has 33 scans; at most 32 are decoded at this size"):
        decode_encoded(data, max_pixels=20_000)  # half the limit: up to 32 scans


def test_a_jpeg_with_hundreds_of_segments_before_its_frame_header_is_refused() -> None:
    data = jpeg(square_image())
    comments = b"\xff\xfe\x00\x03x" * 300  # 300 one-byte COM segments
    with pytest.raises(InvalidFrameError, match="more than 256 segments before its frame header"):
        decode_encoded(data[:2] + comments + data[2:])
    image, _ = decode_encoded(data[:2] + comments[: 5 * 200] + data[2:])  # 200 are fine
    assert image.shape == (80, 96, 3)


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def frame_header(marker: int, width: int, height: int) -> bytes:
    """A start-of-frame segment: precision 8, the size, one component."""
    return segment(marker, b"\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00")


@pytest.mark.parametrize("marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_every_kind_of_frame_header_gives_the_size(marker: int) -> None:
    # baseline, extended, progressive, lossless, hierarchical, arithmetic-coded: all carry the size
    assert capture.jpeg_size(b"\xff\xd8" + frame_header(marker, 640, 480)) == (640, 480)


def test_tables_that_share_the_frame_headers_marker_range_are_skipped() -> None:
    # DHT (C4), JPG (C8) and DAC (CC) sit among the SOF markers but carry no size: a reader that
    # took them for one would read table bytes as the size.
    tables = b"".join(segment(m, b"\x00\x07\x77\x07\x77\x00\x00") for m in (0xC4, 0xC8, 0xCC))
    assert capture.jpeg_size(b"\xff\xd8" + tables + frame_header(0xC0, 640, 480)) == (640, 480)


def with_exif_orientation(data: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF segment saying how to turn it upright (6: 90° clockwise)."""
    ifd = (1).to_bytes(2, "big") + b"\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big") + b"\x00\x00"
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + ifd + b"\x00\x00\x00\x00"
    return data[:2] + segment(0xE1, b"Exif\x00\x00" + tiff) + data[2:]


@pytest.mark.parametrize("min_size", [None, (16, 16)])
def test_a_jpeg_turned_upright_by_its_exif_orientation_reports_its_upright_size(
    min_size: tuple[int, int] | None,
) -> None:
    data = with_exif_orientation(jpeg(square_image(64, 32)), 6)  # stored 64 wide, 32 high
    image, size = decode_encoded(data, min_size=min_size)
    assert size == (32, 64)  # upright: 32 wide, 64 high
    assert image.shape[:2] == ((64, 32) if min_size is None else (32, 16))  # in full, or at 1/2
    _, plain_size = decode_encoded(with_exif_orientation(jpeg(square_image(64, 32)), 1), min_size=min_size)
    assert plain_size == (64, 32)  # orientation 1: as stored


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_image_sizes_come_from_headers_or_are_unknown() -> None:
    assert capture.image_size(jpeg(square_image(96, 80))) == (96, 80)
    assert capture.image_size(png(square_image(50, 30))) == (50, 30)
    assert capture.image_size(png(square_image(50, 30))[:23]) is None  # too short for the PNG size
    assert capture.image_size(b"\xff\xd8\xff\xda\x00\x02") is None  # a JPEG with no frame header
    assert capture.image_size(b"GIF89a") is None


def test_jpeg_and_png_are_told_by_their_first_bytes() -> None:
    assert capture.is_jpeg(b"\xff\xd8\xff\xe0") and not capture.is_jpeg(b"\xff\xd8\x00\xe0")
    assert not capture.is_jpeg(b"\xff\xd8")
    assert capture.is_png(b"\x89PNG\r\n\x1a\n....") and not capture.is_png(b"\x89PNG\r\n\x1a")


def test_the_pixel_limit_is_inclusive_and_sizes_must_be_positive() -> None:
    capture._check_size(100, 50, 5000)
    with pytest.raises(InvalidFrameError, match=r"^image 100x51 exceeds the limit of 5000 pixels$"):
        capture._check_size(100, 51, 5000)
    for width, height in ((0, 5), (5, 0), (-1, 5)):
        with pytest.raises(InvalidFrameError, match=rf"^image has zero size \({width}x{height}\)$"):
            capture._check_size(width, height, 5000)


def test_fill_bytes_and_markers_without_a_length_are_skipped_before_the_frame_header() -> None:
    sof = frame_header(0xC0, 33, 17)
    # a fill byte, a restart marker (D0) and TEM (01) carry no length; a comment segment does
    data = b"\xff\xd8" + b"\xff\xff\xd0" + b"\xff\x01" + segment(0xFE, b"hi") + sof
    assert capture.jpeg_size(data) == (33, 17)
    assert capture.jpeg_header(data).sof_offset == data.index(sof)


def test_a_frame_header_cut_short_is_no_frame_header() -> None:
    cut = (b"\xff\xd8" + frame_header(0xC0, 33, 17))[:10]
    with pytest.raises(InvalidFrameError, match=r"^corrupt JPEG: no frame header$"):
        capture.jpeg_size(cut)


def test_at_most_256_segments_may_come_before_the_frame_header() -> None:
    comment = segment(0xFE, b"x")
    sof = frame_header(0xC0, 33, 17)
    assert capture.jpeg_size(b"\xff\xd8" + comment * 255 + sof) == (33, 17)  # the frame header is the 256th
    with pytest.raises(InvalidFrameError, match="more than 256 segments"):
        capture.jpeg_size(b"\xff\xd8" + comment * 256 + sof)


@pytest.mark.parametrize(
    ("size", "min_size", "decoded"),
    [((720, 576), (160, 160), (360, 288)), ((721, 577), (160, 160), (361, 289)), ((1281, 1025), (160, 160), (321, 257)),
     ((1281, 1025), (161, 129), (161, 129)), ((1281, 1025), None, (1281, 1025)), ((100, 100), (13, 13), (13, 13))],
)  # fmt: skip
def test_the_reduced_decode_size_rounds_up_and_covers_the_asked_size(
    size: tuple[int, int], min_size: tuple[int, int] | None, decoded: tuple[int, int]
) -> None:
    assert capture.jpeg_decoded_size(*size, min_size) == decoded


def test_grey_raw_pixels_become_three_equal_channels() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = decode_raw(grey.tobytes(), 4, 3, PixelFormat.GRAY8)
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))
    assert PixelFormat.GRAY8.channels == 1 and PixelFormat.BGR8.channels == PixelFormat.RGB8.channels == 3


def test_raw_bgr_pixels_are_copied_not_shared() -> None:
    data = bytearray(square_image(4, 2).tobytes())
    out = decode_raw(bytes(data), 4, 2, PixelFormat.BGR8)
    assert out.flags.writeable and out.flags.owndata


def png_header(width: int, height: int) -> bytes:
    """The first 24 bytes of a PNG: signature and the IHDR chunk's size fields."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")


def test_a_png_header_alone_gives_the_size_and_every_byte_of_it_counts() -> None:
    assert capture.image_size(png_header(0x01000001, 3)) == (0x01000001, 3)
    assert capture.image_size(png_header(5, 0x01000002)) == (5, 0x01000002)
    with pytest.raises(InvalidFrameError, match=r"^image 16777217x1 exceeds the limit of 4096 pixels$"):
        decode_encoded(png_header(0x01000001, 1) + b"\x00" * 8, max_pixels=4096)
    with pytest.raises(InvalidFrameError, match=r"^image 1x16777217 exceeds the limit of 4096 pixels$"):
        decode_encoded(png_header(1, 0x01000001), max_pixels=4096)  # exactly the 24 bytes


def test_magic_bytes_must_match_exactly_not_merely_sort_after() -> None:
    assert not capture.is_jpeg(b"\xff\xd9\xff\xe0") and not capture.is_png(b"\x89PNH\r\n\x1a\n")


def test_a_byte_that_is_no_marker_where_a_segment_should_start_ends_the_search() -> None:
    with pytest.raises(InvalidFrameError, match="no frame header"):
        capture.jpeg_size(b"\xff\xd8\x00\x00\x00\x00" + frame_header(0xC0, 33, 17))


def test_image_data_before_the_frame_header_is_not_skipped_as_a_segment() -> None:
    with pytest.raises(InvalidFrameError, match="no frame header"):
        capture.jpeg_size(b"\xff\xd8" + segment(0xDA, b"ab") + frame_header(0xC0, 33, 17))


def test_a_frame_header_of_exactly_its_size_fields_is_enough_and_long_segments_are_skipped_whole() -> None:
    assert capture.jpeg_size(b"\xff\xd8" + frame_header(0xC0, 33, 17)[:9]) == (33, 17)
    comment = segment(0xFE, bytes(range(256)) * 2)  # a 514-byte length: both of its bytes count
    assert capture.jpeg_size(b"\xff\xd8" + comment + frame_header(0xC0, 33, 17)) == (33, 17)


@pytest.mark.parametrize(
    ("size", "min_size", "decoded"),
    [((1281, 1025), (200, 100), (321, 257)), ((1280, 1024), (161, 100), (320, 256)), ((640, 96), (50, 24), (160, 24))],
)  # fmt: skip
def test_the_reduction_checks_width_and_height_each_against_their_own(
    size: tuple[int, int], min_size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    assert capture.jpeg_decoded_size(*size, min_size) == decoded


def test_a_tall_jpeg_turned_upright_reports_its_upright_size() -> None:
    data = with_exif_orientation(jpeg(square_image(33, 65)), 6)  # stored 33 wide, 65 high: upright 65 x 33
    image, size = decode_encoded(data, min_size=(16, 16))
    assert size == (65, 33) and image.shape[:2] == (17, 33)  # at 1/2, turned


def test_raw_pixels_are_read_per_format_for_frames_of_any_size() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 9,216 bytes: every channel different
    assert np.array_equal(decode_raw(bgr.tobytes(), 64, 48, PixelFormat.BGR8), bgr)
    assert np.array_equal(decode_raw(bgr[..., ::-1].tobytes(), 64, 48, PixelFormat.RGB8), bgr)
    grey = bgr[..., 1].copy()
    assert np.array_equal(decode_raw(grey.tobytes(), 64, 48, PixelFormat.GRAY8), np.repeat(grey[..., None], 3, axis=2))


def test_one_pixel_is_a_size_and_a_negative_one_is_not() -> None:
    capture._check_size(5, 1, 100)
    capture._check_size(1, 5, 100)
    with pytest.raises(InvalidFrameError, match=r"^image has zero size \(5x-1\)$"):
        capture._check_size(5, -1, 100)


def test_exactly_the_scan_limit_is_still_decoded() -> None:
    data = with_repeated_last_scan(progressive(square_image(100, 100)), 54)  # 64 scans
    assert data.count(b"\xff\xda") == 64
    decode_encoded(data)


def test_a_png_too_short_for_its_size_fields_is_decoded_and_found_corrupt() -> None:
    with pytest.raises(InvalidFrameError, match=r"^corrupt PNG: cannot decode$"):
        decode_encoded(png_header(1, 0x01000001)[:23], max_pixels=4096)


def test_a_tall_jpeg_without_rotation_keeps_its_size() -> None:
    data = with_exif_orientation(jpeg(square_image(33, 65)), 1)
    image, size = decode_encoded(data, min_size=(16, 16))
    assert size == (33, 65) and image.shape[:2] == (33, 17)


def test_scan_markers_are_counted_from_the_offset_given() -> None:
    data = b"\xff\xd8\xff\xda\x00\xff\xff\xda\xff\x00\xda\xff\xda"
    # at 2 (before the frame header's end, say), 6 (after a fill byte) and 11 (the last two bytes);
    # FF 00 DA is not one
    assert count_scan_markers(data) == 3
    assert count_scan_markers(data, 3) == 2  # the first marker's second byte: no longer counted
    assert count_scan_markers(data, 11) == 1
    assert count_scan_markers(data, 12) == 0 and count_scan_markers(b"") == 0
