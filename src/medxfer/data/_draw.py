"""Vectorised drawing for the synthetic benchmark (see :mod:`medxfer.data.synthetic`).

Every image is drawn from two random generators: one for traits shared by a synthetic patient (skin tone,
slide stain, head shape, the lesion or tumour itself) and one for the image (view, crop, noise).  All
geometry is expressed in normalised coordinates ``x, y`` in ``[-1, 1]`` (pixel centres, ``y`` pointing down),
so an image looks the same at every size apart from its resolution.  Nothing here loops over pixels: fields
are numpy expressions in float32, nuclei are drawn in batches, hairs with PIL.

Functions named ``<task>_patient(rng, class_index, ood)`` return a dict of patient traits and
``<task>_image(rng, traits, size, ood)`` return a uint8 array ((H, W, 3) for RGB tasks, (H, W) for MRI).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

F32 = np.float32

# ----------------------------------------------------------------------------------------------- helpers


@lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size) * 2.0 - 1.0
    c = c.astype(F32)
    c.flags.writeable = False
    return c


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(x, y)`` in ``[-1, 1]``, each of shape (size, size), float32."""
    c = _axis(size)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _bspline3(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


@lru_cache(maxsize=1024)
def _upsampler(size: int, cells: float) -> np.ndarray:
    """(size, m) cubic B-spline weights from an m-point lattice spaced size/cells pixels apart, unit variance."""
    step = size / cells
    m = int(np.ceil(cells)) + 5
    pos = (np.arange(size) + 0.5)[:, None] / step  # pixel centres in lattice units
    lattice = np.arange(m)[None, :] - 2.0
    w = _bspline3(pos - lattice)
    w /= np.sqrt((w**2).sum(axis=1).mean())  # white lattice noise -> output variance about 1
    w = w.astype(F32)
    w.flags.writeable = False
    return w


def smooth_noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Band-limited Gaussian noise with about ``cells`` random values across the image; mean 0, std about 1."""
    cells = float(min(max(cells, 1.0), size))
    cells = float(2.0 ** (round(np.log2(cells) * 8) / 8))  # a few cached lattices: 1/8-octave steps
    w = _upsampler(size, cells)
    low = rng.standard_normal((w.shape[1], w.shape[1]), dtype=F32)
    return w @ low @ w.T


def fractal_noise(rng: np.random.Generator, size: int, cells: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` octaves of :func:`smooth_noise`, each twice as fine and ``gain`` times as strong."""
    out = np.zeros((size, size), dtype=F32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2**o
        if o and c > size / 2:  # finer than two pixels would only alias
            break
        out += F32(amp) * smooth_noise(rng, size, c)
        total += amp**2
        amp *= gain
    return out * F32(1.0 / np.sqrt(total))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return F32(0.5) * (F32(1.0) + np.tanh(F32(0.5) * z))


def radial_profile(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """``sum_k amps[k] * cos(ks[k] * theta + phases[k])`` for an array of angles."""
    out = np.zeros_like(theta)
    for a, p, k in zip(amps, phases, ks):
        if a != 0.0:
            out += a * np.cos(k * theta + p)
    return out


def polar(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray, ks: np.ndarray, n: int = 1024) -> np.ndarray:
    """:func:`radial_profile` for a whole image of angles, through a periodic lookup table (much faster)."""
    t = np.linspace(-np.pi, np.pi, n, endpoint=False)
    table = radial_profile(t, amps, phases, ks).astype(F32)
    idx = np.rint((theta + F32(np.pi)) * F32(n / (2 * np.pi))).astype(np.intp) % n
    return table[idx]


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur over the two spatial axes (channels untouched)."""
    if sigma_px <= 0.05:
        return img
    sig = (sigma_px, sigma_px) + (0,) * (img.ndim - 2)
    return gaussian_filter(img, sig, mode="nearest")


def gauss(rng: np.random.Generator, shape: tuple, sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=F32) * F32(sigma)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * F32(255.0)), 0, 255).astype(np.uint8)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode a uint8 image as JPEG (deterministic for a given Pillow build)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as j:
        return np.asarray(j, dtype=np.uint8).copy()


def resample_blur(img: np.ndarray, factor: float) -> np.ndarray:
    """Lose resolution: downsample by ``factor`` and upsample back (float image in [0, 1], H x W x C)."""
    size = img.shape[0]
    small = max(4, int(round(size / factor)))
    if small >= size:
        return img
    u8 = Image.fromarray(to_uint8(img))
    u8 = u8.resize((small, small), Image.BILINEAR).resize((size, size), Image.BICUBIC)
    return np.asarray(u8, dtype=F32) * F32(1 / 255.0)


def _beta(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.beta(a, b))


def _rgb(*v: float) -> np.ndarray:
    return np.array(v, dtype=F32)


# ------------------------------------------------------------------------------------------ dermoscopy

_SKIN_LIGHT = _rgb(0.93, 0.78, 0.69)
_SKIN_MID = _rgb(0.78, 0.57, 0.44)
_SKIN_DARK = _rgb(0.42, 0.28, 0.20)

_PIGMENTS = {
    "tan": _rgb(0.66, 0.45, 0.30),
    "brown": _rgb(0.45, 0.28, 0.17),
    "dark": _rgb(0.24, 0.14, 0.10),
    "black": _rgb(0.10, 0.08, 0.08),
    "bluegrey": _rgb(0.40, 0.43, 0.50),
    "regression": _rgb(0.82, 0.72, 0.70),
}


def _skin_colour(t: float) -> np.ndarray:
    t = float(np.clip(t, 0.0, 1.0))
    if t < 0.5:
        return _SKIN_LIGHT + (_SKIN_MID - _SKIN_LIGHT) * F32(t / 0.5)
    return _SKIN_MID + (_SKIN_DARK - _SKIN_MID) * F32((t - 0.5) / 0.5)


def derm_patient(rng: np.random.Generator, class_index: int, ood: bool) -> dict:
    """Traits of one synthetic skin lesion (classes: 0 benign, 1 malignant)."""
    # Latent atypia: class-dependent but overlapping distributions, so no single cue separates the classes.
    s = _beta(rng, 5.0, 2.6) if class_index == 1 else _beta(rng, 2.2, 4.5)
    ks = np.arange(4, 15)
    return {
        "s": s,
        # dermoscopy archives are dominated by light skin; smartphone clinics see every skin type
        "tone": float(rng.uniform(0.0, 1.0)) if ood else _beta(rng, 1.4, 5.0),
        "tone_red": float(rng.normal(0.0, 0.03)),
        "pigment": float(np.clip(rng.normal(0.35 + 0.45 * s, 0.18), 0.0, 1.0)),
        "asym": float((0.02 + 0.22 * s) * rng.uniform(0.5, 1.4)),
        "asym_phase": float(rng.uniform(0, 2 * np.pi)),
        "lobes": rng.standard_normal(2) * (0.03 + 0.12 * s),
        "lobe_phase": rng.uniform(0, 2 * np.pi, 2),
        "ks": ks,
        "k_amp": rng.standard_normal(len(ks)) / ks**1.2,
        "k_phase": rng.uniform(0, 2 * np.pi, len(ks)),
        "border": float((0.02 + 0.3 * s**1.5) * rng.uniform(0.6, 1.4)),
        "edge": float(np.clip(0.06 - 0.045 * s + rng.normal(0, 0.01), 0.008, 0.08)),
        "varieg": float(np.clip(s + rng.normal(0.0, 0.17), 0.0, 1.0) ** 1.3),
        "blue": float(rng.uniform() < 0.1 + 0.55 * s),
        "regress": float(rng.uniform() < 0.05 + 0.35 * s),
        "net_freq": float(rng.uniform(14.0, 22.0)),
        "net_warp": float(0.3 + 2.5 * s * rng.uniform(0.5, 1.5)),
        "net_amp": float(rng.uniform(0.0, 0.22)),
        "size": float(rng.uniform(0.42, 0.62) * (0.9 + 0.3 * s)),
        "hairy": bool(rng.uniform() < 0.35),
        "hair_dark": float(rng.uniform(0.05, 0.3)),
    }


def _draw_hairs(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Anti-aliased mask (float32, 0..1) of ``n`` gently curved hairs."""
    ss = 2  # draw at twice the size, then downsample: smooth lines without per-pixel work
    big = size * ss
    mask = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(mask)
    width = max(1, int(round(big / 110)))
    t = np.linspace(0, 1, 24)
    for _ in range(n):
        p0 = rng.uniform(-1.1, 1.1, 2)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.6, 2.2)
        bend = rng.normal(0, 0.35)
        direction = np.array([np.cos(ang), np.sin(ang)])
        normal = np.array([-direction[1], direction[0]])
        pts = p0[None] + np.outer(t * length, direction) + np.outer(bend * length * t * (1 - t), normal)
        px = (pts + 1.0) * 0.5 * big
        d.line([tuple(p) for p in px.tolist()], fill=255, width=width, joint="curve")
    mask = mask.resize((size, size), Image.BOX)
    return np.asarray(mask, dtype=F32) * F32(1 / 255.0)


def derm_image(rng: np.random.Generator, tr: dict, size: int, ood: bool) -> np.ndarray:
    x, y = grid(size)
    s = tr["s"]
    # ----- skin with texture and fine skin lines
    skin = _skin_colour(tr["tone"] + rng.normal(0, 0.02)) + _rgb(tr["tone_red"], 0.0, -tr["tone_red"])
    tex = F32(0.045) * fractal_noise(rng, size, 5, 3) + F32(0.015) * smooth_noise(rng, size, min(size / 2, 40))
    la = rng.uniform(0, np.pi)
    lines = np.cos((x * F32(np.cos(la)) + y * F32(np.sin(la))) * F32(30) + F32(2.0) * smooth_noise(rng, size, 4))
    tex -= F32(0.02) * np.clip(lines - F32(0.6), 0, None)
    img = skin * (F32(1.0) + tex[..., None])
    # ----- lesion geometry: polar radius with asymmetry, lobes and a noisy border
    rot = rng.uniform(0, 2 * np.pi)  # each photo of the lesion is rotated and moved in the frame
    if ood:
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        scale = tr["size"] * rng.uniform(0.55, 0.85)  # clinical photo: the lesion is small in the frame
    else:
        cx, cy = rng.normal(0, 0.07, 2)
        scale = tr["size"] * rng.uniform(0.9, 1.12)
    dx, dy = x - F32(cx), y - F32(cy)
    r = np.hypot(dx, dy)
    th = np.arctan2(dy, dx)
    jitter = 1.0 + rng.normal(0, 0.25, len(tr["ks"]))
    ks = np.concatenate([[1, 2, 3], tr["ks"]])
    amps = np.concatenate([[tr["asym"]], tr["lobes"], tr["border"] * tr["k_amp"] * jitter])
    phases = np.concatenate([[-tr["asym_phase"]], tr["lobe_phase"], tr["k_phase"]]) - ks * rot
    shape = F32(1.0) + polar(th, amps, phases, ks)
    rad = F32(scale) * np.clip(shape, F32(0.35), None)
    edge = F32(tr["edge"] * scale + 1.0 / size)
    alpha = sigmoid((rad - r) / edge)
    rn = np.clip(r / np.maximum(rad, F32(1e-6)), 0, 1)  # 0 at the centre, 1 on the border
    # ----- lesion colour: base pigment darkening to the centre plus variegated regions
    pig = F32(tr["pigment"])
    base = _PIGMENTS["tan"] * (1 - pig) + _PIGMENTS["brown"] * pig
    base = base * (F32(0.55) + F32(0.45) * skin / _SKIN_LIGHT)  # the same pigment looks darker on darker skin
    col = base * (F32(1.0) - F32(0.25) * (F32(1.0) - rn) ** F32(1.5))[..., None]
    v = F32(tr["varieg"])
    nscale = 3.0 / max(scale, 0.1)
    n1 = fractal_noise(rng, size, nscale, 2)
    n2 = fractal_noise(rng, size, nscale, 2)
    n3 = fractal_noise(rng, size, nscale * 1.3, 2)
    weights = (
        (sigmoid((n1 - F32(0.3)) / F32(0.25)) * v, "dark"),
        (sigmoid((n1 - F32(1.1)) / F32(0.15)) * v ** F32(1.5), "black"),
        (F32(0.55 * tr["blue"]) * sigmoid((n2 - F32(0.7)) / F32(0.3)) * v, "bluegrey"),
        (F32(0.55 * tr["regress"]) * sigmoid((n3 - F32(0.9)) / F32(0.3)) * v * np.clip(rn * F32(1.3), 0, 1), "regression"),
    )
    for w, name in weights:
        col += (_PIGMENTS[name] - col) * w[..., None]
    # low-amplitude colour mottling in every lesion; benign lesions stay close to uniform
    col *= (F32(1.0) + F32(0.03 + 0.08 * tr["varieg"]) * fractal_noise(rng, size, nscale * 2, 2))[..., None]
    # pigment network: a regular mesh in benign naevi, a distorted, broken one in atypical lesions
    if tr["net_amp"] > 0.02:
        warp = F32(tr["net_warp"]) * smooth_noise(rng, size, nscale * 1.5)
        f = tr["net_freq"] / max(scale, 0.2) * 0.5
        cr, sr = F32(np.cos(rot) * f), F32(np.sin(rot) * f)
        net = np.abs(np.sin(dx * cr + dy * sr + warp)) * np.abs(np.sin(dy * cr - dx * sr + F32(0.7) * warp))
        net_w = F32(tr["net_amp"]) * (F32(1) - net) ** 4 * np.clip(F32(1.2) - rn, 0, 1)
        col *= (F32(1.0) - net_w)[..., None]
    img += (col - img) * alpha[..., None]
    # ----- hairs
    if tr["hairy"]:
        hm = F32(0.85) * _draw_hairs(rng, size, int(rng.integers(1, 9)))
        img += (_rgb(0.12, 0.09, 0.07) + F32(tr["hair_dark"]) - img) * hm[..., None]
    # ----- acquisition
    if not ood:
        # dermoscope: even polarised light with a gentle falloff, a circular field stop with dark corners
        d0 = np.hypot(x - F32(rng.normal(0, 0.03)), y - F32(rng.normal(0, 0.03)))
        rv = rng.uniform(1.0, 1.3)
        falloff = F32(1.0) - F32(0.18 / rv**2) * d0**2
        stop = sigmoid((F32(rv) - d0) / F32(0.035 + 1.5 / size))
        tint = (1.0 + rng.normal(0, 0.02, 3)).astype(F32)
        img = img * (falloff * stop)[..., None] * tint + F32(0.02) * (F32(1) - stop)[..., None]
        img = blur(img, 0.35 * size / 96)
        img += gauss(rng, img.shape[:2], 0.008)[..., None]
        return to_uint8(img)
    # smartphone clinical photo: uneven light, white balance, soft focus, sensor noise, JPEG
    a = rng.uniform(0, 2 * np.pi)
    g = rng.uniform(0.1, 0.35)
    light = F32(1.0) + x * F32(g * np.cos(a)) + y * F32(g * np.sin(a)) + F32(0.06) * smooth_noise(rng, size, 2)
    exposure = rng.uniform(0.75, 1.15)
    wb = _rgb(rng.uniform(0.88, 1.12), 1.0, rng.uniform(0.82, 1.15))
    img = np.clip(img * (light * F32(exposure))[..., None] * wb, 0, 1)
    img = resample_blur(img, rng.uniform(1.3, 2.2))
    img += gauss(rng, img.shape, rng.uniform(0.01, 0.03)) + gauss(rng, img.shape[:2], 0.01)[..., None]
    return jpeg_roundtrip(to_uint8(img), int(rng.integers(40, 80)))


# ------------------------------------------------------------------------------------------- histology

# Optical-density stain vectors (absorbance of R, G, B per unit concentration).
_H_VEC = np.array([0.5626, 0.7201, 0.4062])  # haematoxylin (Macenko reference)
_E_VEC = np.array([0.2159, 0.8012, 0.5581])  # eosin
_H_VEC_OOD = np.array([0.65, 0.70, 0.29])  # another lab: bluer haematoxylin (Ruifrok) ...
_E_VEC_OOD = np.array([0.07, 0.99, 0.11])  # ... and a more magenta eosin


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def histo_patient(rng: np.random.Generator, class_index: int, ood: bool) -> dict:
    """Traits of one synthetic slide (classes: 0 benign, 1 malignant)."""
    s = _beta(rng, 5.0, 2.4) if class_index == 1 else _beta(rng, 2.2, 5.0)
    h_vec = _H_VEC_OOD if ood else _H_VEC
    e_vec = _E_VEC_OOD if ood else _E_VEC
    return {
        "s": s,
        # per-slide stain variation (every batch of every lab differs a little)
        "h_vec": _unit(h_vec + rng.normal(0, 0.03, 3)),
        "e_vec": _unit(e_vec + rng.normal(0, 0.03, 3)),
        "h_gain": float(rng.lognormal(0.0, 0.1)) * (rng.uniform(1.15, 1.4) if ood else 1.0),
        "e_gain": float(rng.lognormal(0.0, 0.12)) * (rng.uniform(0.65, 0.85) if ood else 1.0),
        "stroma": float(rng.uniform(0.35, 0.65)),
        "fibre_angle": float(rng.uniform(0, np.pi)),
        "fibre_freq": float(rng.uniform(9.0, 16.0)),
        "density": float(rng.lognormal(0.0, 0.2)),
        "nuc_r": float((1.15 + 0.85 * s) * rng.lognormal(0.0, 0.08)),
        "pleo": float(0.06 + 0.32 * s**1.2),
        "chrom": float(np.clip(0.75 + 0.85 * s + rng.normal(0, 0.15), 0.5, 2.2)),
        "cluster": float(np.clip(s + rng.normal(0, 0.15), 0, 1)),
        "glands": float(np.clip(1.0 - s + rng.normal(0, 0.2), 0, 1)),
        "mag": float(rng.uniform(1.3, 1.6)) if ood else 1.0,
    }


def stamp_ellipses(
    size: int,
    cx: np.ndarray,
    cy: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    ang: np.ndarray,
    soft: float,
    wobble: np.ndarray | None = None,
    chunk: int = 96,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft-edged ellipses (pixel units), drawn in batches of equal-size windows.

    ``wobble`` is an optional (N, 4) array ``a2, a3, p2, p3``: harmonics 2 and 3 of the outline (irregular
    nuclei).  Returns ``(flat_index, value, owner)``: pixels ``flat_index`` (into a size*size image) get
    ``value`` in (0, 1] from ellipse ``owner``.
    """
    n = len(cx)
    if n == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, np.zeros(0, dtype=F32), empty
    if wobble is None:
        wobble = np.zeros((n, 4))
    ext = np.maximum(ra, rb) * (1.1 + 1.2 * np.abs(wobble[:, :2]).sum(axis=1)) + 2 * soft + 1
    order = np.argsort(ext, kind="stable")
    out_i, out_v, out_o = [], [], []
    for start in range(0, n, chunk):
        sel = order[start : start + chunk]
        half = int(np.ceil(ext[sel].max()))
        off = np.arange(-half, half + 1)
        bx = np.floor(cx[sel]).astype(np.intp)
        by = np.floor(cy[sel]).astype(np.intp)
        X = bx[:, None, None] + off[None, None, :]  # (m, 1, K) pixel columns
        Y = by[:, None, None] + off[None, :, None]  # (m, K, 1) pixel rows
        dx = (X + 0.5 - cx[sel, None, None]).astype(F32)
        dy = (Y + 0.5 - cy[sel, None, None]).astype(F32)
        c = np.cos(ang[sel]).astype(F32)[:, None, None]
        s_ = np.sin(ang[sel]).astype(F32)[:, None, None]
        u = (dx * c + dy * s_) / ra[sel].astype(F32)[:, None, None]
        v = (dy * c - dx * s_) / rb[sel].astype(F32)[:, None, None]
        d = np.sqrt(u * u + v * v)
        wb = wobble[sel]
        if np.any(wb[:, :2]):  # harmonics of the polar angle via multiple-angle identities
            dd = np.maximum(d, F32(1e-6))
            c1, s1 = u / dd, v / dd
            c2, s2 = c1 * c1 - s1 * s1, F32(2) * c1 * s1
            c3, s3 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
            k = [(wb[:, i, None, None]).astype(F32) for i in range(4)]
            w = k[0] * (c2 * np.cos(k[2]) - s2 * np.sin(k[2])) + k[1] * (c3 * np.cos(k[3]) - s3 * np.sin(k[3]))
            d = d / (F32(1.0) + w)
        rmin = np.minimum(ra[sel], rb[sel]).astype(F32)[:, None, None]
        val = sigmoid((F32(1.0) - d) * rmin / F32(soft))
        ok = (X >= 0) & (X < size) & (Y >= 0) & (Y < size) & (val > F32(2e-3))
        flat = Y * size + X
        out_i.append(flat[ok])
        out_v.append(val[ok])
        out_o.append(np.broadcast_to(sel[:, None, None], val.shape)[ok])
    return np.concatenate(out_i), np.concatenate(out_v), np.concatenate(out_o)


def _max_into(img: np.ndarray, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    flat = img.reshape(-1)
    np.maximum.at(flat, idx, val)
    return img


def histo_image(rng: np.random.Generator, tr: dict, size: int, ood: bool) -> np.ndarray:
    x, y = grid(size)
    s = tr["s"]
    px = size / 96.0  # pixels per reference pixel (sizes below are tuned at 96 px)
    mag = tr["mag"]
    zoom = px * mag
    base_r = tr["nuc_r"] * zoom
    # ----- stroma: eosin with wavy collagen fibres and a few empty spaces
    ang = tr["fibre_angle"] + rng.normal(0, 0.25)
    f = tr["fibre_freq"] / mag
    warp = F32(3.0) * fractal_noise(rng, size, 2.5, 3)
    fibre = (F32(0.5) + F32(0.5) * np.cos(x * F32(np.cos(ang) * f) + y * F32(np.sin(ang) * f) + warp)) ** 3
    fine = fractal_noise(rng, size, 12 / mag, 2)
    E = F32(tr["stroma"]) * (F32(0.55) + F32(0.55) * fibre + F32(0.12) * fine)
    gaps = sigmoid((fractal_noise(rng, size, 3 / mag, 2) - F32(1.3)) / F32(0.15))
    H = F32(0.06) + F32(0.03) * fine
    # cellular (epithelial / tumour) regions: basophilic cytoplasm, more of it in atypical tissue
    cell_thr = 0.6 - 1.4 * tr["cluster"] + rng.normal(0, 0.2)
    cells = sigmoid((fractal_noise(rng, size, 2.5 / mag, 2) - F32(cell_thr)) / F32(0.35))
    H += F32(0.12 * (0.5 + s)) * cells
    E *= F32(1) - F32(0.35) * cells
    # ----- glands: lumens lined by epithelium with one row of small regular nuclei
    lumen = np.zeros((size, size), dtype=F32)
    epi = np.zeros((size, size), dtype=F32)
    nuc = []  # arrays of cx, cy, ra, rb, angle, concentration, wobble(4), nucleolus
    n_glands = rng.poisson(2.2 * tr["glands"] / mag**2)
    for _ in range(n_glands):
        gx, gy = rng.uniform(0.1, 0.9, 2) * size
        gr = rng.uniform(0.05, 0.11) * size / mag
        asp, gang = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        outer = gr + 3.5 * base_r
        ga = np.array([gang, gang])
        i, val, o = stamp_ellipses(size, np.array([gx, gx]), np.array([gy, gy]), np.array([outer, gr]),
                                   np.array([outer * asp, gr * asp]), ga, 1.2 * px)
        _max_into(epi, i[o == 0], val[o == 0])
        _max_into(lumen, i[o == 1], val[o == 1])
        n_ring = max(6, int(2 * np.pi * gr / (2.2 * max(base_r, 0.8))))
        t = np.linspace(0, 2 * np.pi, n_ring, endpoint=False) + rng.uniform(0, 1) + rng.normal(0, 0.08, n_ring)
        rr = gr + 1.6 * base_r
        lx, ly = np.cos(t) * rr, np.sin(t) * rr * asp
        ca, sa = np.cos(gang), np.sin(gang)
        nuc.append(  # columnar cells: nuclei point away from the lumen
            (gx + lx * ca - ly * sa + rng.normal(0, 0.4 * px, n_ring), gy + lx * sa + ly * ca + rng.normal(0, 0.4 * px, n_ring),
             base_r * rng.uniform(1.0, 1.3, n_ring), np.full(n_ring, base_r * 0.6), t + gang,
             np.full(n_ring, 0.85 * tr["chrom"]), np.zeros((n_ring, 4)), np.zeros(n_ring, bool))
        )
    epi = np.clip(epi - lumen, 0, 1)  # the lining: pale purple cytoplasm around the lumen
    H += F32(0.1) * epi
    E *= F32(1) - F32(0.3) * epi
    keep = (F32(1) - F32(0.9) * lumen) * (F32(1) - F32(0.85) * gaps)
    E *= keep
    H *= keep
    H += F32(0.05) * lumen * np.clip(F32(0.5) + F32(0.5) * smooth_noise(rng, size, 6), 0, 1)  # secretions
    # ----- scattered nuclei: density, size, shape irregularity and darkness all grow with atypia
    area = (size / 96.0) ** 2 / mag**2
    n_nuc = int(rng.poisson(area * tr["density"] * (28 + 140 * s**1.2)))
    if n_nuc:
        # place nuclei preferentially inside the cellular regions (rejection sampling on the cell field)
        cand = rng.uniform(0, size, (n_nuc * 4, 2))
        ci = np.clip(cand.astype(np.intp), 0, size - 1)
        kept = rng.uniform(size=len(cand)) < 0.15 + 0.85 * cells[ci[:, 1], ci[:, 0]]
        pos = cand[kept][:n_nuc]
        m = len(pos)
        pleo = tr["pleo"]
        ra = base_r * rng.lognormal(0, pleo, m) * rng.uniform(0.95, 1.25, m)
        rb = ra * np.clip(rng.normal(0.8 - 0.1 * s, 0.08 + 0.15 * pleo, m), 0.35, 1.0)
        conc = tr["chrom"] * rng.lognormal(0, 0.08 + 0.2 * s, m)
        wob = np.concatenate(
            [np.clip(rng.normal(0, pleo * 0.35, (m, 2)), -0.3, 0.3), rng.uniform(0, 2 * np.pi, (m, 2))], axis=1
        )
        nucleolus = rng.uniform(size=m) < 0.6 * s**2
        nuc.append((pos[:, 0], pos[:, 1], ra, rb, rng.uniform(0, np.pi, m), conc, wob, nucleolus))
    # stromal fibroblasts: thin elongated nuclei along the fibres
    n_fib = int(rng.poisson(area * 10 * tr["density"]))
    if n_fib:
        r0 = 0.9 * zoom * rng.uniform(0.9, 1.2, n_fib)
        nuc.append((rng.uniform(0, size, n_fib), rng.uniform(0, size, n_fib), r0 * 2.2, r0 * 0.55,
                    np.full(n_fib, ang), np.full(n_fib, 0.9 * tr["chrom"]), np.zeros((n_fib, 4)), np.zeros(n_fib, bool)))
    if nuc:
        cx, cy, ra, rb, na, conc, wob, nucleolus = (np.concatenate(parts) for parts in zip(*nuc))
        ra, rb = np.maximum(ra, 0.6), np.maximum(rb, 0.45)
        chrom_tex = smooth_noise(rng, size, min(size / 2.0, 48 / mag)).reshape(-1)
        idx, val, own = stamp_ellipses(size, cx, cy, ra, rb, na, 0.6 * px, wob)
        tex = F32(1.0) + F32(0.1 + 0.15 * s) * chrom_tex[idx]
        nuc_h = _max_into(np.zeros((size, size), F32), idx, conc.astype(F32)[own] * val * tex)
        nuc_mask = _max_into(np.zeros((size, size), F32), idx, val)
        H = np.maximum(H, nuc_h)
        E *= F32(1.0) - F32(0.6) * nuc_mask
        # nucleoli: a dark dot inside large atypical nuclei
        sel = np.flatnonzero(nucleolus & (ra > 1.5))
        if len(sel):
            k = len(sel)
            rr = np.maximum(0.5, ra[sel] * 0.22)
            i2, v2, _ = stamp_ellipses(size, cx[sel] + rng.normal(0, 1, k) * ra[sel] * 0.2,
                                       cy[sel] + rng.normal(0, 1, k) * rb[sel] * 0.2, rr, rr, np.zeros(k), 0.5 * px)
            H += F32(0.6) * _max_into(np.zeros((size, size), F32), i2, v2)
    # ----- render with the Beer-Lambert law, then scanner blur and noise
    od = (F32(tr["h_gain"]) * H)[..., None] * tr["h_vec"].astype(F32) + (F32(tr["e_gain"]) * E)[..., None] * tr["e_vec"].astype(F32)
    img = np.exp(-od) * F32(rng.uniform(0.93, 0.99))
    if ood:
        img = blur(img, rng.uniform(0.6, 1.1) * px)  # slightly out of focus
        img += gauss(rng, img.shape[:2], rng.uniform(0.02, 0.035))[..., None]  # luminance grain
        img += gauss(rng, img.shape, 0.012)
    else:
        img = blur(img, 0.35 * px)
        img += gauss(rng, img.shape[:2], 0.01)[..., None]
    return to_uint8(img)


# ----------------------------------------------------------------------------------------------- MRI

MRI_GLIOMA, MRI_MENINGIOMA, MRI_NONE, MRI_PITUITARY = 0, 1, 2, 3


def mri_patient(rng: np.random.Generator, class_index: int, ood: bool) -> dict:
    """Traits of one synthetic head and its tumour (classes: glioma, meningioma, no_tumor, pituitary)."""
    tr = {
        "cls": class_index,
        "ax": float(rng.uniform(0.64, 0.74)),
        "ay": float(rng.uniform(0.80, 0.90)),
        "head_amps": rng.normal(0, 0.01, 3),
        "head_phases": rng.uniform(0, 2 * np.pi, 3),
        "vent": float(rng.uniform(0.7, 1.4)),
        "gm": float(rng.uniform(0.40, 0.48)),
        "wm": float(rng.uniform(0.60, 0.68)),
        "scalp": float(rng.uniform(0.7, 0.9)),
        "gyri_cells": float(rng.uniform(10, 15)),
        "gyri_seed": int(rng.integers(2**31)),
        "pit_normal": bool(rng.uniform() < 0.35),  # a visible normal pituitary gland
        "t_amps": np.zeros(5),
        "t_phases": rng.uniform(0, 2 * np.pi, 5),
    }
    if class_index == MRI_GLIOMA:
        side = 0.0 if rng.uniform() < 0.5 else np.pi
        tr.update(
            t_ang=float(rng.uniform(-0.45, 0.45) * np.pi + side),
            t_pos=float(rng.uniform(0.2, 0.62)),
            t_r=float(rng.uniform(0.09, 0.24)),
            t_amps=rng.normal(0, 0.16, 5) / np.arange(1, 6) ** 0.5,
            enh=float(rng.beta(2.0, 1.3)),  # low grade (no enhancement) ... high grade (ring enhancement)
            necrosis=float(rng.uniform(0.0, 0.7)),
            oedema=float(rng.uniform(1.3, 2.3)),
            t_int=float(rng.uniform(0.72, 0.95)),
        )
    elif class_index == MRI_MENINGIOMA:
        tr.update(
            t_ang=float(rng.uniform(0, 2 * np.pi)),
            t_r=float(rng.uniform(0.07, 0.2)),
            t_amps=rng.normal(0, 0.03, 5),
            t_int=float(rng.uniform(0.78, 0.98)),
            oedema=float(rng.uniform(1.0, 1.6)) if rng.uniform() < 0.35 else 0.0,
            embed=float(rng.uniform(0.55, 0.95)),  # how far the centre sits inside the inner skull
        )
    elif class_index == MRI_PITUITARY:
        tr.update(
            t_x=float(rng.normal(0, 0.025)),
            t_y=float(rng.uniform(0.28, 0.45)),
            t_r=float(rng.uniform(0.045, 0.11)),
            t_amps=rng.normal(0, 0.06, 5),
            t_int=float(rng.uniform(0.7, 0.95)),
        )
    if ood:
        # another scanner and protocol: contrast curve, bias field, noise, field of view
        tr["gamma"] = float(rng.uniform(0.5, 0.72) if rng.uniform() < 0.5 else rng.uniform(1.35, 1.7))
        tr["fov"] = float(rng.uniform(0.72, 0.88))
        tr["noise"] = float(rng.uniform(0.045, 0.08))
        tr["bias"] = float(rng.uniform(0.15, 0.3))
        tr["gm_wm"] = float(rng.uniform(0.3, 0.7))  # grey/white contrast relative to the usual protocol
    else:
        tr["gamma"] = 1.0
        tr["fov"] = float(rng.uniform(0.96, 1.04))
        tr["noise"] = float(rng.uniform(0.012, 0.025))
        tr["bias"] = float(rng.uniform(0.0, 0.1))
        tr["gm_wm"] = 1.0
    return tr


def _blend(img: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
    """``img * (1 - weight) + value * weight``."""
    return img + (value - img) * weight


def mri_image(rng: np.random.Generator, tr: dict, size: int, ood: bool) -> np.ndarray:
    x, y = grid(size)
    cls = tr["cls"]
    # ----- head pose and slice level (the images of one patient are neighbouring slices)
    z = rng.uniform(-0.6, 0.6)  # slice offset from the tumour centre, -1..1
    fov = tr["fov"]
    rot = rng.normal(0, 0.1 if ood else 0.06)
    cx, cy = rng.normal(0, 0.02, 2) + (rng.normal(0, 0.05, 2) if ood else 0.0)
    c, s_ = np.cos(rot) / fov, np.sin(rot) / fov
    xs, ys = x - F32(cx), y - F32(cy)
    u = xs * F32(c) + ys * F32(s_)  # head frame: u left-right, v anterior (-) to posterior (+)
    v = ys * F32(c) - xs * F32(s_)
    th = np.arctan2(v, u)
    ax = tr["ax"] * (1 - 0.05 * z**2)
    ay = tr["ay"] * (1 - 0.05 * z**2)
    r = np.hypot(u, v)
    cos_t, sin_t = u / np.maximum(r, F32(1e-6)), v / np.maximum(r, F32(1e-6))
    ell = F32(1.0) / np.sqrt((cos_t * F32(1 / ax)) ** 2 + (sin_t * F32(1 / ay)) ** 2)
    rho = r / (ell * (F32(1.0) + polar(th, tr["head_amps"], tr["head_phases"], np.array([2, 3, 4]))))
    aa = F32(1.5 / size / (fov * 0.8))  # antialiasing width in rho units
    # ----- layers: scalp, skull, CSF rim, cortex, white matter
    brain_edge = 0.84
    inside_head = sigmoid((F32(1.0) - rho) / aa)
    skull = sigmoid((rho - F32(0.86)) / aa) * sigmoid((F32(0.93) - rho) / aa)
    brain = sigmoid((F32(brain_edge) - rho) / aa)
    rng_g = np.random.default_rng(tr["gyri_seed"])  # the same folding pattern in every slice of a patient
    g1 = fractal_noise(rng_g, size, tr["gyri_cells"] / fov, 2)
    g2 = fractal_noise(rng_g, size, tr["gyri_cells"] * 1.7 / fov, 2)
    g1 += F32(0.3 * rng.standard_normal()) * smooth_noise(rng, size, 3)  # neighbouring slices differ a little
    wm_edge = F32(0.66 - 0.04 * z**2) + F32(0.07) * g1
    wm = sigmoid((wm_edge - rho) / (aa * 2))
    gm, wmv = tr["gm"], tr["wm"]
    mid = 0.5 * (gm + wmv)
    gm, wmv = mid + (gm - mid) * tr["gm_wm"], mid + (wmv - mid) * tr["gm_wm"]
    tissue = F32(gm) + F32(wmv - gm) * wm + F32(0.02) * fractal_noise(rng, size, 16 / fov, 2)
    csf = F32(0.12)
    # sulci: thin CSF clefts in the cortex
    sulci = sigmoid((F32(0.09) - np.abs(g2)) / F32(0.04)) * sigmoid((rho - wm_edge) / F32(0.02))
    tissue = _blend(tissue, csf, F32(0.6) * sulci)
    # interhemispheric fissure
    fiss = np.exp(-((u / F32(0.012 + 1.0 / size)) ** 2)) * sigmoid((np.abs(v) - F32(0.22 * (1 + 0.3 * z))) / F32(0.03))
    tissue = _blend(tissue, csf, F32(0.8) * fiss)
    # lateral ventricles (butterfly shape) and deep grey nuclei
    vs = tr["vent"] * max(0.15, 1.0 - 0.9 * abs(z + 0.2))
    shift = 0.0
    if cls == MRI_GLIOMA:  # mass effect pushes the ventricles away from the tumour
        shift = -np.sign(np.cos(tr["t_ang"])) * 0.25 * tr["t_r"] * (1 - abs(z))
    vent = np.zeros_like(u)
    for side in (-1.0, 1.0):
        vu, vv = u - F32(side * 0.075 * tr["vent"] ** 0.5 + shift), v + F32(0.04)
        ca, sa = F32(np.cos(side * 0.3)), F32(np.sin(side * 0.3))
        pu, pv = vu * ca + vv * sa, vv * ca - vu * sa
        dvent = (pu * F32(1 / (0.055 * vs))) ** 2 + (pv * F32(1 / (0.21 * max(vs, 0.5)))) ** 2
        vent = np.maximum(vent, sigmoid((F32(1) - dvent) / F32(0.25)))
        dg = ((u - F32(side * 0.2)) / F32(0.09)) ** 2 + ((v - F32(0.02)) / F32(0.14)) ** 2
        tissue -= F32(0.07) * sigmoid((F32(1) - dg) / F32(0.3))
    tissue = _blend(tissue, csf, vent)
    # normal pituitary region (skull base, lower centre): a small bright spot in some heads
    if tr["pit_normal"] and cls != MRI_PITUITARY:
        dp = (u / F32(0.035)) ** 2 + ((v - F32(0.36)) / F32(0.025)) ** 2
        tissue += F32(0.25) * sigmoid((F32(1) - dp) / F32(0.3))
    # ----- tumour
    if cls != MRI_NONE:
        zr = np.sqrt(max(0.05, 1 - z**2))  # slices off the tumour centre cut a smaller section
        if cls == MRI_GLIOMA:
            tu = np.cos(tr["t_ang"]) * tr["t_pos"] * tr["ax"]
            tv = np.sin(tr["t_ang"]) * tr["t_pos"] * tr["ay"]
        elif cls == MRI_MENINGIOMA:
            a = tr["t_ang"]
            e = brain_edge / np.sqrt((np.cos(a) / ax) ** 2 + (np.sin(a) / ay) ** 2)
            dist = e - tr["embed"] * tr["t_r"] * zr
            tu, tv = np.cos(a) * dist, np.sin(a) * dist
        else:
            tu, tv = tr["t_x"], tr["t_y"] * tr["ay"]
        t_r = tr["t_r"] * zr * rng.uniform(0.92, 1.08)
        du, dv = u - F32(tu), v - F32(tv)
        tshape = F32(1.0) + polar(np.arctan2(dv, du), tr["t_amps"], tr["t_phases"], np.arange(1, 6))
        if cls == MRI_GLIOMA:
            tshape += F32(0.06) * smooth_noise(rng, size, 10)
        dn = np.hypot(du, dv) / (F32(t_r) * np.clip(tshape, F32(0.4), None))  # 1 on the tumour border
        tex = smooth_noise(rng, size, 14 / fov)
        if cls == MRI_GLIOMA:
            oed = sigmoid((F32(tr["oedema"]) - dn + F32(0.25) * smooth_noise(rng, size, 8)) / F32(0.12))
            tissue = _blend(tissue, F32(0.28), F32(0.55) * oed)
            mass = sigmoid((F32(1) - dn) / F32(0.08))
            rim = np.exp(-(((dn - F32(0.75)) / F32(0.25)) ** 2))
            core = sigmoid((F32(tr["necrosis"]) - dn) / F32(0.08))
            enh = tr["enh"]
            val = (F32(0.38) + F32(0.1) * tex + F32(enh * (tr["t_int"] - 0.38)) * (F32(0.35) + F32(0.65) * rim)
                   - F32(0.2 * enh) * core)
        else:
            if cls == MRI_MENINGIOMA and tr["oedema"] > 0:
                tissue = _blend(tissue, F32(0.3), F32(0.3) * sigmoid((F32(tr["oedema"]) - dn) / F32(0.1)))
            mass = sigmoid((F32(1) - dn) / F32(0.04))
            val = F32(tr["t_int"]) + F32(0.03) * tex
        tissue = _blend(tissue, val, mass)
        if cls == MRI_MENINGIOMA:
            brain = np.maximum(brain, mass)  # the mass may indent the CSF rim
    # ----- compose the slice
    img = F32(tr["scalp"]) * inside_head * (F32(1) + F32(0.05) * smooth_noise(rng, size, min(20, size / 2)))
    img = _blend(img, F32(0.08), skull)
    img = _blend(img, tissue, brain)
    rim_csf = sigmoid((rho - F32(brain_edge)) / aa) * sigmoid((F32(0.86) - rho) / aa)
    img = _blend(img, csf, rim_csf)
    img = blur(img, 0.4 * size / 96)
    # ----- acquisition: bias field, contrast curve, Rician noise
    ba = rng.uniform(0, 2 * np.pi)
    b = tr["bias"]
    bias = np.exp(x * F32(b * np.cos(ba)) + y * F32(b * np.sin(ba)) + F32(0.5 * b) * smooth_noise(rng, size, 2))
    img = np.clip(img * bias, 0, 1.2)
    if tr["gamma"] != 1.0:
        img = img ** F32(tr["gamma"])
    sig = tr["noise"]
    img = np.sqrt((img + gauss(rng, img.shape, sig)) ** 2 + gauss(rng, img.shape, sig) ** 2)
    # intensity window as in an 8-bit export: the 99.5th percentile maps to (nearly) white
    hi = float(np.percentile(img, 99.5))
    img *= F32(rng.uniform(0.9, 1.0) / max(hi, 1e-6))
    return to_uint8(img)
