"""The image pipeline: upload checks, edit operations and rendered variants (all in memory)."""

from __future__ import annotations

import io
import pickle
import time

import msgspec
import pytest
import pyvips
from PIL import Image, ImageCms

from picscale.imaging import (
    MAX_OPERATIONS,
    Blur,
    Crop,
    ImageFormat,
    ImageInfo,
    ImageRejected,
    InvalidEdit,
    Operation,
    Rendered,
    Sharpen,
    operations_from_json,
    operations_to_json,
    probe,
    render,
    validate_operations,
)

MAX_PIXELS = 50_000_000
ALL_FORMATS = list(ImageFormat)
PIL_FORMATS = {ImageFormat.JPEG: "JPEG", ImageFormat.PNG: "PNG", ImageFormat.WEBP: "WEBP"}


# -- images, made in memory ----------------------------------------------------------------


def picture(width: int, height: int) -> Image.Image:
    """An RGB gradient with a little texture: not a flat colour."""
    x = Image.linear_gradient("L").resize((width, height))
    y = x.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    return Image.merge("RGB", (x, y, Image.effect_noise((width, height), 40)))


def encode(image: Image.Image, fmt: ImageFormat = ImageFormat.JPEG, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, PIL_FORMATS[fmt], **options)
    return out.getvalue()


def photo(width: int, height: int, fmt: ImageFormat = ImageFormat.JPEG) -> bytes:
    return encode(picture(width, height), fmt)


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 12"  # Model
    exif[0x0131] = "SecretEditor 1.0"  # Software
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"  # GPSLatitudeRef
    gps[2] = (51.0, 30.0, 12.5)  # GPSLatitude
    gps[3] = "W"
    gps[4] = (0.0, 7.0, 39.0)
    return exif


def load(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def render_simple(source: bytes, ops: list[Operation] | None = None) -> Rendered:
    return render(source, ops or [], max_pixels=MAX_PIXELS)


def rejected(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageRejected:
    with pytest.raises(ImageRejected) as probed:
        probe(data, max_pixels=max_pixels)
    with pytest.raises(ImageRejected) as rendered:
        render(data, [], max_pixels=max_pixels)
    assert probed.value.status == rendered.value.status
    return probed.value


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    # 20000 x 20000 = 400 megapixels of black: about 4 MB on disk, 400 MB once decoded
    data: bytes = pyvips.Image.black(20000, 20000).pngsave_buffer(compression=1)
    return data


# -- ImageFormat ---------------------------------------------------------------------------


def test_image_format_names() -> None:
    assert [f.extension for f in ALL_FORMATS] == ["jpg", "png", "webp"]
    assert [f.content_type for f in ALL_FORMATS] == ["image/jpeg", "image/png", "image/webp"]
    assert ImageFormat.from_extension("jpg") is ImageFormat.JPEG
    assert ImageFormat.from_extension("JPEG") is ImageFormat.JPEG
    assert ImageFormat.from_extension(".webp") is ImageFormat.WEBP
    assert ImageFormat.from_extension("png") is ImageFormat.PNG
    for other in ("gif", "svg", "", "jpgx", "tiff"):
        assert ImageFormat.from_extension(other) is None


# -- probe: what is accepted ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.value)
def test_probe_each_format(fmt: ImageFormat) -> None:
    assert probe(photo(120, 80, fmt), max_pixels=MAX_PIXELS) == ImageInfo(fmt, 120, 80)


def test_probe_png_with_alpha_and_grey() -> None:
    rgba = picture(40, 30).convert("RGBA")
    assert probe(encode(rgba, ImageFormat.PNG), max_pixels=MAX_PIXELS).width == 40
    grey = picture(40, 30).convert("L")
    assert probe(encode(grey), max_pixels=MAX_PIXELS) == ImageInfo(ImageFormat.JPEG, 40, 30)


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 8])
def test_exif_orientation_gives_displayed_size(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(picture(64, 32), exif=exif)
    info = probe(data, max_pixels=MAX_PIXELS)
    turned = orientation in (5, 6, 7, 8)
    assert (info.width, info.height) == ((32, 64) if turned else (64, 32))
    rendered = render_simple(data)
    assert (rendered.width, rendered.height) == (info.width, info.height)
    assert load(rendered.variants["original"]).size == (info.width, info.height)


def test_orientation_6_turns_the_pixels() -> None:
    # left half white, right half black; orientation 6 shows it turned 90 degrees clockwise,
    # so the white half ends up on top
    image = Image.new("RGB", (64, 32), "black")
    image.paste((255, 255, 255), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load(render_simple(encode(image, exif=exif)).variants["original"]).convert("L")
    assert out.size == (32, 64)
    top = out.getpixel((16, 8))
    bottom = out.getpixel((16, 56))
    assert isinstance(top, int) and isinstance(bottom, int)
    assert top > 200 and bottom < 50


def test_pixel_limit_counts_pixels() -> None:
    data = photo(100, 100)
    assert probe(data, max_pixels=10_000).width == 100
    error = rejected(data, max_pixels=9_999)
    assert error.status == 413
    assert "100x100" in error.message


# -- probe: what is refused ----------------------------------------------------------------


def test_decompression_bomb_is_refused_from_the_header(bomb_png: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ImageRejected) as caught:
        probe(bomb_png, max_pixels=MAX_PIXELS)
    with pytest.raises(ImageRejected):
        render(bomb_png, [Blur(sigma=1)], max_pixels=MAX_PIXELS)
    # decoding 400 megapixels takes seconds and 400 MB; reading the header takes nothing
    assert time.perf_counter() - started < 0.5
    assert caught.value.status == 413
    assert str(caught.value) == caught.value.message
    assert caught.value.message == (
        "image is 20000x20000 = 400 megapixels; the limit is 50 megapixels"
    )


def test_a_jpeg_claiming_huge_dimensions_is_refused() -> None:
    data = bytearray(photo(16, 16))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    error = rejected(bytes(data))
    assert error.status == 413
    assert "60000x60000 = 3600 megapixels" in error.message


UNSUPPORTED = {
    "text renamed .jpg": b"hello, I am not an image\n" * 20,
    "html": b"<!doctype html><html><script>alert(1)</script></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>',
    "svg with xml prolog": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
    "pdf": b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n",
    "riff but not webp": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32,
    "jpeg magic cut short": b"\xff\xd8",
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_other_files_are_unsupported(name: str) -> None:
    error = rejected(UNSUPPORTED[name])
    assert error.status == 415
    assert "JPEG, PNG or WebP" in error.message


@pytest.mark.parametrize("kind", ["GIF", "BMP", "TIFF"])
def test_real_images_in_other_formats_are_unsupported(kind: str) -> None:
    out = io.BytesIO()
    picture(20, 20).save(out, kind)
    error = rejected(out.getvalue())
    assert error.status == 415
    assert "not a JPEG, PNG or WebP" in error.message


def test_empty_file() -> None:
    error = rejected(b"")
    assert error.status == 422
    assert error.message == "the file is empty"


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.value)
def test_truncated_image(fmt: ImageFormat) -> None:
    data = photo(600, 400, fmt)
    error = rejected(data[: len(data) // 2])
    assert error.status == 422
    assert "truncated or corrupt" in error.message


def test_corrupt_jpeg_with_wiped_tables() -> None:
    data = bytearray(photo(600, 400))
    data[400:2000] = b"\x00" * 1600
    error = rejected(bytes(data))
    assert error.status == 422
    assert "corrupt" in error.message


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"garbage" * 50,
        b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10,
        b"RIFF\x30\x00\x00\x00WEBPVP8 " + b"\x01" * 40,
    ],
    ids=["jpeg", "png", "webp"],
)
def test_junk_behind_magic_bytes(data: bytes) -> None:
    error = rejected(data)
    assert error.status == 422
    assert "truncated or corrupt" in error.message


def test_garbled_scan_data_never_escapes_as_a_vips_error() -> None:
    # libjpeg recovers from bad entropy-coded data with a warning, not an error: such a
    # file may pass (fail_on="error" tolerates the warnings common in camera files), but
    # whatever happens is an ImageInfo or an ImageRejected, never a pyvips.Error
    data = bytearray(photo(400, 300))
    start = data.index(b"\xff\xda")  # start of scan: header intact, pixels garbled
    for i in range(start + 200, len(data) - 2, 50):
        data[i] = 0xFF
    for attempt in (
        lambda: probe(bytes(data), max_pixels=MAX_PIXELS),
        lambda: render_simple(bytes(data), [Blur(sigma=1)]),
    ):
        try:
            assert attempt().width == 400
        except ImageRejected as exc:
            outcome = exc
        else:
            continue
        assert outcome.status == 422


def test_image_rejected_survives_a_process_pool() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected(413, "too big")))  # noqa: S301
    assert (error.status, error.message, str(error)) == (413, "too big", "too big")


# -- operations ----------------------------------------------------------------------------


def test_operations_json_round_trip() -> None:
    ops: list[Operation] = [Crop(x=1, y=2, width=3, height=4), Sharpen(sigma=1.5), Blur(sigma=2)]
    as_json = operations_to_json(ops)
    assert as_json == [
        {"op": "crop", "x": 1, "y": 2, "width": 3, "height": 4},
        {"op": "sharpen", "sigma": 1.5},
        {"op": "blur", "sigma": 2},
    ]
    assert operations_from_json(as_json) == ops
    assert msgspec.json.decode(msgspec.json.encode(ops), type=list[Operation]) == ops


@pytest.mark.parametrize(
    "bad",
    [
        b'[{"op":"sharpen","sigma":0}]',
        b'[{"op":"sharpen","sigma":10.5}]',
        b'[{"op":"blur","sigma":-1}]',
        b'[{"op":"blur","sigma":50.01}]',
        b'[{"op":"blur","sigma":"3"}]',
        b'[{"op":"blur"}]',
        b'[{"op":"blur","sigma":1,"radius":2}]',
        b'[{"op":"rotate","angle":90}]',
        b'[{"op":"crop","x":-1,"y":0,"width":1,"height":1}]',
        b'[{"op":"crop","x":0,"y":0,"width":0,"height":1}]',
        b'[{"op":"crop","x":0.5,"y":0,"width":1,"height":1}]',
    ],
)
def test_bad_operations_fail_to_decode(bad: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad, type=list[Operation])
    with pytest.raises(msgspec.ValidationError):
        operations_from_json(msgspec.json.decode(bad))


def test_crops_are_tracked_through_the_chain() -> None:
    chain: list[Operation] = [
        Crop(x=100, y=100, width=400, height=300),
        Sharpen(sigma=1),
        Crop(x=300, y=200, width=100, height=100),  # fits the 400x300 crop exactly
    ]
    validate_operations(chain, 800, 600)
    with pytest.raises(InvalidEdit) as caught:
        validate_operations([*chain[:2], Crop(x=301, y=0, width=100, height=10)], 800, 600)
    assert str(caught.value) == (
        "operation 3 (crop): x + width must be <= 400 (the image is 400x300 at this step)"
    )
    with pytest.raises(InvalidEdit, match=r"operation 2 \(crop\): y \+ height must be <= 50"):
        validate_operations(
            [Crop(x=0, y=0, width=100, height=50), Crop(x=0, y=1, width=10, height=50)], 800, 600
        )


def test_crop_outside_the_image() -> None:
    with pytest.raises(InvalidEdit) as caught:
        validate_operations([Crop(x=0, y=0, width=801, height=600)], 800, 600)
    assert str(caught.value) == (
        "operation 1 (crop): x + width must be <= 800 (the image is 800x600 at this step)"
    )
    with pytest.raises(InvalidEdit, match="x and y must be >= 0"):
        validate_operations([Crop(x=-1, y=0, width=10, height=10)], 800, 600)
    with pytest.raises(InvalidEdit, match="width and height must be >= 1"):
        validate_operations([Crop(x=0, y=0, width=0, height=10)], 800, 600)


def test_operation_count() -> None:
    validate_operations([Blur(sigma=1)] * MAX_OPERATIONS, 800, 600)
    with pytest.raises(InvalidEdit, match="11 operations: at most 10"):
        validate_operations([Blur(sigma=1)] * (MAX_OPERATIONS + 1), 800, 600)
    with pytest.raises(InvalidEdit, match="empty"):
        validate_operations([], 800, 600)


@pytest.mark.parametrize(
    ("op", "words"),
    [
        (Sharpen(sigma=0.05), "operation 1 (sharpen): sigma must be between 0.1 and 10.0"),
        (Sharpen(sigma=11), "between 0.1 and 10.0, not 11"),
        (Blur(sigma=0), "operation 1 (blur): sigma must be between 0.1 and 50.0"),
        (Blur(sigma=51), "not 51"),
        (Blur(sigma=float("nan")), "finite"),
        (Sharpen(sigma=float("inf")), "finite"),
    ],
)
def test_sigma_out_of_range_in_structs(op: Operation, words: str) -> None:
    # built in Python, a struct skips msgspec's checks: validate_operations repeats them
    with pytest.raises(InvalidEdit) as caught:
        validate_operations([op], 800, 600)
    assert words in str(caught.value)


# -- render --------------------------------------------------------------------------------


def sniffed(data: bytes) -> str:
    return Image.open(io.BytesIO(data)).format or ""


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.value)
def test_variants_keep_the_source_format_and_widths(fmt: ImageFormat) -> None:
    rendered = render_simple(photo(1200, 800, fmt))
    assert rendered.format is fmt
    assert (rendered.width, rendered.height) == (1200, 800)
    assert sorted(rendered.variants) == ["large", "original", "thumb"]
    sizes = {name: load(data).size for name, data in rendered.variants.items()}
    assert sizes == {"original": (1200, 800), "large": (1080, 720), "thumb": (320, 213)}
    for data in rendered.variants.values():
        assert sniffed(data) == PIL_FORMATS[fmt]


def test_small_images_are_never_enlarged() -> None:
    rendered = render_simple(photo(200, 150))
    for data in rendered.variants.values():
        assert load(data).size == (200, 150)
    between = render_simple(photo(700, 100))
    sizes = {name: load(data).size for name, data in between.variants.items()}
    assert sizes == {"original": (700, 100), "large": (700, 100), "thumb": (320, 46)}


def test_operations_are_applied_in_order() -> None:
    ops: list[Operation] = [
        Crop(x=10, y=20, width=600, height=400),
        Sharpen(sigma=1),
        Crop(x=0, y=0, width=500, height=100),
        Blur(sigma=3),
    ]
    rendered = render_simple(photo(800, 600), ops)
    assert (rendered.width, rendered.height) == (500, 100)
    assert load(rendered.variants["original"]).size == (500, 100)
    assert load(rendered.variants["thumb"]).size == (320, 64)


def test_crop_takes_the_right_pixels() -> None:
    image = Image.new("RGB", (100, 100), "black")
    image.paste((255, 255, 255), (50, 50, 100, 100))
    out = load(
        render_simple(encode(image, ImageFormat.PNG), [Crop(50, 50, 50, 50)]).variants["original"]
    )
    assert out.size == (50, 50)
    assert out.getextrema() == ((255, 255), (255, 255), (255, 255))


def test_blur_and_sharpen_change_the_pixels() -> None:
    source = encode(picture(300, 200), ImageFormat.PNG)
    plain = load(render_simple(source).variants["original"]).tobytes()
    for op in (Blur(sigma=2), Sharpen(sigma=2)):
        changed = load(render_simple(source, [op]).variants["original"])
        assert changed.size == (300, 200)
        assert changed.tobytes() != plain


def test_render_refuses_a_crop_that_does_not_fit() -> None:
    with pytest.raises(ImageRejected) as caught:
        render_simple(photo(300, 200), [Crop(x=250, y=0, width=100, height=10)])
    assert caught.value.status == 422
    assert "x + width must be <= 300" in caught.value.message


def test_render_accepts_a_chain_longer_than_one_edit() -> None:
    rendered = render_simple(photo(64, 48), [Blur(sigma=0.5)] * (MAX_OPERATIONS + 2))
    assert (rendered.width, rendered.height) == (64, 48)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=lambda f: f.value)
def test_metadata_and_gps_are_stripped(fmt: ImageFormat) -> None:
    source_image = picture(1200, 300)
    options: dict[str, object] = {"exif": gps_exif().tobytes()}
    if fmt is not ImageFormat.WEBP:
        options["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if fmt is ImageFormat.PNG:
        from PIL.PngImagePlugin import PngInfo

        text = PngInfo()
        text.add_text("Comment", "shot at my home address")
        options["pnginfo"] = text
    source = encode(source_image, fmt, **options)
    assert load(source).getexif().get_ifd(0x8825)  # the source does carry GPS
    rendered = render_simple(source, [Sharpen(sigma=1)])
    for name, data in rendered.variants.items():
        out = load(data)
        assert len(out.getexif()) == 0, name
        assert not out.getexif().get_ifd(0x8825), name
        assert "exif" not in out.info, name
        assert "icc_profile" not in out.info, name
        assert "Comment" not in out.info, name
        for marker in (b"Exif\x00", b"PhoneMaker", b"SecretEditor", b"my home", b"ns.adobe"):
            assert marker not in data, (name, marker)


def test_cmyk_jpeg_becomes_rgb() -> None:
    source = encode(picture(400, 300).convert("CMYK"))
    rendered = render_simple(source)
    for data in rendered.variants.values():
        assert load(data).mode == "RGB"


def test_a_wide_gamut_profile_is_baked_into_srgb_pixels() -> None:
    # pure sRGB red, converted to Display P3 and tagged with its profile
    red = pyvips.Image.black(64, 64, bands=3).new_from_image([255, 0, 0])
    red = red.copy(interpretation="srgb").icc_transform("p3")
    source: bytes = red.pngsave_buffer()
    in_p3 = load(source).getpixel((5, 5))
    assert isinstance(in_p3, tuple) and in_p3[0] < 245  # the stored numbers are not sRGB's
    out = load(render_simple(source).variants["original"])
    assert "icc_profile" not in out.info
    pixel = out.convert("RGB").getpixel((5, 5))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 250 and pixel[1] < 10 and pixel[2] < 10


def test_png_transparency_is_kept() -> None:
    image = picture(1200, 100).convert("RGBA")
    image.putalpha(128)
    rendered = render_simple(encode(image, ImageFormat.PNG))
    for data in rendered.variants.values():
        out = load(data)
        assert out.mode == "RGBA"
        assert out.getextrema()[3] == (128, 128)


def test_rendered_survives_a_process_pool() -> None:
    rendered = render_simple(photo(40, 30))
    assert pickle.loads(pickle.dumps(rendered)) == rendered  # noqa: S301
