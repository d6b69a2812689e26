#!/usr/bin/env python3
"""Image fixtures for tests/test_image.c: small PNG/JPEG files and what PIL
(and torchvision / diffusers / torch, where they define the semantics) make
of them.

Writes tests/fixtures/images/:
  *.png, *.jpg          inputs: RGB/RGBA/gray/gray+alpha/1-bit/palette(+tRNS)
                        /4-bit palette/16-bit RGB/16-bit gray/Adam7 PNGs;
                        baseline 4:2:0, 4:2:2, 4:4:4, gray, progressive, CMYK
                        JPEGs; exif_<o>.jpg / exif_<o>.png for EXIF
                        Orientation o = 1..8 (even o little-endian "II", odd
                        o big-endian "MM" TIFF headers), all of which show the
                        same upright 20x12 picture; bad_* files (truncated,
                        text, empty, 0x0 and huge headers).
  refs.safetensors      U8 / F32 tensors:
    dec.<file>.rgb / .l     (H, W, 3) / (H, W) u8 (.l not for orientation files): PIL's
                            ImageOps.exif_transpose(open(f)).convert("RGB"/"L")
    upright                 (12, 20, 3) u8: the picture every exif_<o> shows
    rs.<case>.<filter>      (H, W, C) u8: PIL Image.resize(size, filter)
    db.<case>               (H, W, 3) u8: torchvision Resize(r, BILINEAR) +
                            CenterCrop(r) / crop at a fixed offset
    t.image                 (3, 16, 24) f32: diffusers VaeImageProcessor
                            .preprocess (x / 255 * 2 - 1)
    t.mask                  (16, 24) f32: diffusers mask processor (grayscale,
                            /255, binarised at 0.5)
    t.mask_latent.<h>x<w>   (h, w) f32: torch.nn.functional.interpolate(mask,
                            size=(h, w)) (mode "nearest")
    t.masked                (3, 16, 24) f32: image * (mask < 0.5)
Deterministic: same bytes every run. Needs numpy, pillow, torch, torchvision,
diffusers, safetensors.  Run: python3 tools/make_image_fixture.py
"""
import io
import os
import struct
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torchvision import transforms

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "images")
REFS = {}


def picture(w, h, seed):
    """A small deterministic RGB picture (H, W, 3) u8: gradients, a disc, a
    checkerboard patch (to show aliasing) and mild noise."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x * 0.7) * np.cos(y * 0.45)
    img = np.stack([r, g, b], -1)
    disc = (x - w * 0.3) ** 2 + (y - h * 0.6) ** 2 < (min(w, h) * 0.25) ** 2
    img[disc] = [250, 30, 60]
    cb = (x > w * 0.6) & (y < h * 0.4)
    img[cb] = np.where(((x[cb].astype(int) + y[cb].astype(int)) % 2)[:, None] == 0, 255.0, 0.0)
    img += rs.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def u8(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.uint8)))


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def add_decode_ref(name):
    """What diffusers' load_image does: exif_transpose, then convert."""
    im = Image.open(os.path.join(OUT, name))
    im.load()
    up = ImageOps.exif_transpose(im)
    REFS[f"dec.{name}.rgb"] = u8(np.array(up.convert("RGB")))
    if not name.startswith(("exif_", "xmp_", "rawexif_")):  # orientation files: RGB only
        REFS[f"dec.{name}.l"] = u8(np.array(up.convert("L")))


# ---------------------------------------------------------------------------
# A minimal PNG writer for what PIL cannot write (16-bit RGB, Adam7, 0x0 and
# huge headers); every chunk gets a correct CRC so only the content is bad.

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_file(w, h, depth, ctype, raw_scanlines, interlace=0):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw_scanlines, 9))
            + png_chunk(b"IEND", b""))


def png_rows(a):
    """(H, W, C) array of big-endian samples -> filter-0 scanlines."""
    return b"".join(b"\x00" + row.tobytes() for row in a)


def png_adam7(a):
    """8-bit (H, W, C) -> Adam7-interlaced scanlines."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    out = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            out += png_rows(sub)
    return out


# ---------------------------------------------------------------------------
# EXIF: an IFD0 holding Make (an ASCII pointer, so the parser must skip an
# entry) and Orientation, in either byte order.

def exif_tiff(orientation, big_endian):
    e = ">" if big_endian else "<"
    head = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    make = b"sdc-test\x00"
    n = 2
    ifd_size = 2 + n * 12 + 4
    make_off = 8 + ifd_size
    ifd = struct.pack(e + "H", n)
    ifd += struct.pack(e + "HHII", 0x010F, 2, len(make), make_off)
    ifd += struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    ifd += struct.pack(e + "I", 0)
    return head + ifd + make


# Stored pixels S for orientation o: exif_transpose applies method M_o, so
# S = M_o^-1(upright). Flips, 180, transpose and transverse are their own
# inverses; ROTATE_270 and ROTATE_90 undo each other.
INVERSE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    # --- PNG inputs ---------------------------------------------------------
    base = picture(33, 21, 1)
    rgb = Image.fromarray(base)
    save("rgb.png", pil_bytes(rgb, "PNG"))
    alpha = (np.arange(33 * 21).reshape(21, 33) * 7 % 256).astype(np.uint8)
    save("rgba.png", pil_bytes(Image.fromarray(np.dstack([base, alpha]), "RGBA"), "PNG"))
    save("gray.png", pil_bytes(rgb.convert("L"), "PNG"))
    save("gray_alpha.png", pil_bytes(Image.fromarray(np.dstack([np.array(rgb.convert("L")), alpha]), "LA"), "PNG"))
    save("gray1.png", pil_bytes(rgb.convert("L").point(lambda v: 255 if v > 120 else 0).convert("1"), "PNG"))
    pal = rgb.quantize(colors=40, dither=Image.Dither.NONE)
    save("palette.png", pil_bytes(pal, "PNG", transparency=3))
    save("palette4.png", pil_bytes(rgb.quantize(colors=12, dither=Image.Dither.NONE), "PNG", bits=4))
    # 16-bit: the low byte differs from the high byte, so truncation shows.
    w16 = base.astype(np.uint16) * 257 + (np.arange(base.size).reshape(base.shape) * 37 % 256).astype(np.uint16)
    save("rgb16.png", png_file(33, 21, 16, 2, png_rows(w16.astype(">u2"))))
    g16 = np.array(rgb.convert("L")).astype(np.uint16)  # values < 256: PIL's I;16 -> L clips, sdc takes >> 8
    save("gray16.png", png_file(33, 21, 16, 0, png_rows((g16 * 257)[:, :, None].astype(">u2"))))
    save("interlaced.png", png_file(33, 21, 8, 2, png_adam7(base), interlace=1))

    # --- JPEG inputs --------------------------------------------------------
    save("rgb420.jpg", pil_bytes(rgb, "JPEG", quality=90, subsampling=2))
    save("rgb422.jpg", pil_bytes(rgb, "JPEG", quality=90, subsampling=1))
    save("rgb444.jpg", pil_bytes(rgb, "JPEG", quality=90, subsampling=0))
    save("gray.jpg", pil_bytes(rgb.convert("L"), "JPEG", quality=90))
    save("progressive.jpg", pil_bytes(rgb, "JPEG", quality=85, progressive=True))
    save("cmyk.jpg", pil_bytes(rgb.convert("CMYK"), "JPEG", quality=90))

    decoded = ["rgb.png", "rgba.png", "gray.png", "gray_alpha.png", "gray1.png", "palette.png", "palette4.png",
               "rgb16.png", "interlaced.png", "rgb420.jpg", "rgb422.jpg", "rgb444.jpg", "gray.jpg",
               "progressive.jpg", "cmyk.jpg"]

    # --- EXIF orientations --------------------------------------------------
    up = Image.fromarray(picture(20, 12, 2))
    REFS["upright"] = u8(np.array(up))
    for o in range(1, 9):
        stored = up if INVERSE[o] is None else up.transpose(INVERSE[o])
        tiff = exif_tiff(o, big_endian=(o % 2 == 1))
        save(f"exif_{o}.jpg", pil_bytes(stored, "JPEG", quality=95, subsampling=0, exif=b"Exif\x00\x00" + tiff))
        save(f"exif_{o}.png", pil_bytes(stored, "PNG", exif=tiff))
        decoded += [f"exif_{o}.jpg", f"exif_{o}.png"]
    # Orientation without EXIF, which PIL's getexif also honours: XMP
    # (tiff:Orientation) in JPEG APP1 and PNG iTXt, and ImageMagick's hex
    # "Raw profile type exif" PNG text chunk.
    from PIL import PngImagePlugin
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF>'
           b'</x:xmpmeta>')
    save("xmp_6.jpg", pil_bytes(up.transpose(INVERSE[6]), "JPEG", quality=95, subsampling=0, xmp=xmp % 6))
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", (xmp % 3).decode())
    save("xmp_3.png", pil_bytes(up.transpose(INVERSE[3]), "PNG", pnginfo=info))
    raw = b"Exif\x00\x00" + exif_tiff(8, big_endian=True)
    hexs = raw.hex()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n%8d\n" % len(raw)
                  + "\n".join(hexs[i:i + 72] for i in range(0, len(hexs), 72)) + "\n", zip=True)
    save("rawexif_8.png", pil_bytes(up.transpose(INVERSE[8]), "PNG", pnginfo=info))
    decoded += ["xmp_6.jpg", "xmp_3.png", "rawexif_8.png"]
    for name in decoded:
        add_decode_ref(name)
    for name in ("xmp_3.png", "rawexif_8.png"):  # PIL turns them upright
        assert np.array_equal(REFS[f"dec.{name}.rgb"].numpy(), np.array(up)), name
    # gray16: PIL clips I;16 to 255 when converting; sdc takes the high byte.
    REFS["dec.gray16.png.l"] = u8(np.array(rgb.convert("L")))

    # --- bad inputs ---------------------------------------------------------
    whole_png = open(os.path.join(OUT, "rgb.png"), "rb").read()
    whole_jpg = open(os.path.join(OUT, "rgb420.jpg"), "rb").read()
    save("bad_truncated.png", whole_png[: len(whole_png) // 2])
    save("bad_truncated.jpg", whole_jpg[: len(whole_jpg) // 2])
    save("bad_text.png", b"this is not an image, just text named .png\n")
    save("bad_empty.png", b"")
    save("bad_zero.png", png_file(0, 0, 8, 2, b""))
    save("bad_huge.png", png_file(100000, 100000, 8, 2, b"\x00" * 16))
    # A whole JPEG whose SOF0 claims 60000 x 60000.
    sof = whole_jpg.find(b"\xff\xc0")
    huge = bytearray(whole_jpg)
    huge[sof + 5: sof + 9] = struct.pack(">HH", 60000, 60000)
    save("bad_huge.jpg", bytes(huge))

    # --- resize (PIL Image.resize) -------------------------------------------
    src = Image.fromarray(picture(97, 61, 3))
    save("src97x61.png", pil_bytes(src, "PNG"))
    small = src.crop((10, 5, 42, 29))  # 32 x 24: upsampling source
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
    for fname, f in filters.items():
        REFS[f"rs.down64x64.{fname}"] = u8(np.array(src.resize((64, 64), f)))
        REFS[f"rs.mixed40x70.{fname}"] = u8(np.array(src.resize((40, 70), f)))
        REFS[f"rs.up100x75.{fname}"] = u8(np.array(small.convert("L").resize((100, 75), f)))
        REFS[f"rs.third.{fname}"] = u8(np.array(src.resize((32, 20), f)))

    # --- DreamBooth preprocessing (torchvision, as diffusers train_dreambooth)
    r = 48
    resized = transforms.Resize(r, interpolation=transforms.InterpolationMode.BILINEAR)(src)
    REFS["db.center48"] = u8(np.array(transforms.CenterCrop(r)(resized)))
    REFS["db.crop48_x9"] = u8(np.array(resized.crop((9, 0, 9 + r, r))))
    tall = src.transpose(Image.Transpose.TRANSPOSE).crop((0, 0, 61, 90))  # 61 x 90 -> 48 x 70: odd margin
    save("tall61x90.png", pil_bytes(tall, "PNG"))
    rt = transforms.Resize(r, interpolation=transforms.InterpolationMode.BILINEAR)(tall)
    REFS["db.tall_center48"] = u8(np.array(transforms.CenterCrop(r)(rt)))

    # --- tensors for the pipeline (diffusers VaeImageProcessor) -------------
    from diffusers.image_processor import VaeImageProcessor
    img = Image.fromarray(picture(24, 16, 4))
    save("img24x16.png", pil_bytes(img, "PNG"))
    yy, xx = np.mgrid[0:16, 0:24]
    mask = np.clip(xx * 11 + yy * 3, 0, 255).astype(np.uint8)  # soft ramp across 127/128
    mask[2, 2], mask[3, 3] = 127, 128
    save("mask24x16.png", pil_bytes(Image.fromarray(mask, "L"), "PNG"))
    ip = VaeImageProcessor(vae_scale_factor=8)
    mp = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    ti = ip.preprocess(img)  # (1, 3, 16, 24)
    tm = mp.preprocess(Image.fromarray(mask, "L"))  # (1, 1, 16, 24)
    REFS["t.image"] = ti[0].contiguous()
    REFS["t.mask"] = tm[0, 0].contiguous()
    REFS["t.masked"] = (ti * (tm < 0.5))[0].contiguous()
    for h, w in ((2, 3), (5, 7), (16, 24), (40, 50)):
        REFS[f"t.mask_latent.{h}x{w}"] = torch.nn.functional.interpolate(tm, size=(h, w))[0, 0].contiguous()

    save_file(REFS, os.path.join(OUT, "refs.safetensors"))
    os.chmod(os.path.join(OUT, "refs.safetensors"), 0o644)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {len(os.listdir(OUT))} files, {total / 1024:.0f} KiB, {len(REFS)} reference tensors")


if __name__ == "__main__":
    main()
