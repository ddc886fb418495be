"""A procedurally generated captioned world: the micro CLIP's pretraining data and MTIL-micro.

32x32 RGB images: a two-tone background texture with 1-4 coloured shapes, a letter or digit glyph
(DejaVu fonts shipped with matplotlib) or one of scikit-learn's handwritten digits. Captions mention
each attribute with probability 0.5-0.8. Each evaluation domain asks one attribute, ZSCL-style (seed
000 §3.5: class names, first template for training, the template ensemble for evaluation).
Zero-shot headroom comes from *held-out styles* never seen in pretraining (dark/pastel colours,
rotated shapes, mixed-object counts, textures at new scales/angles, unseen fonts, lower case, ink on
paper). Test images mix in-distribution and held-out ones by `DomainSpec.heldout_fraction`: zero-shot
accuracy is then the weighted mix, so the fraction is the calibration knob. Randomness comes only
from numpy Generators seeded by the caller.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits

from madapt.errors import DataError, UnknownNameError, closest
from madapt.registry import register

SIZE = 32
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "heart", "moon")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
COLOURS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 230, 40),
    "green": (40, 180, 60),
    "cyan": (40, 220, 230),
    "blue": (40, 70, 230),
    "purple": (150, 50, 200),
    "pink": (255, 120, 190),
    "brown": (150, 85, 30),
    "white": (245, 245, 245),
}
TEXTURES = {
    "plain": "plain",
    "striped": "stripes",
    "dotted": "dots",
    "checkered": "checker",
    "noisy": "noise",
    "gradient": "gradient",
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
POSITIONS = {
    "on the left": (0.15, 0.5),
    "on the right": (0.85, 0.5),
    "at the top": (0.5, 0.15),
    "at the bottom": (0.5, 0.85),
    "in the center": (0.5, 0.5),
}
SIZES = {"small": (7, 10), "large": (13, 17)}
PREFIXES = ("", "", "a photo of ", "an image of ", "a picture of ")
PRETRAIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
HELDOUT_FONTS = (
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif-BoldItalic.ttf",
)
# Disjoint index ranges of sklearn's 1,797 handwritten digits: writers seen in pretraining never
# reappear in a domain's train or test split.
DIGIT_RANGES = {"pretrain": (0, 600), "train": (600, 1200), "test": (1200, 1797)}


@dataclass(frozen=True)
class DomainSpec:
    """One classification domain: class names + prompt templates (``{}`` = class name)."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    heldout_fraction: float
    description: str

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


class _Painter:
    """Renders masks, glyphs and backgrounds; caches glyph masks per painter (no global state)."""

    def __init__(self) -> None:
        font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
        self.font_paths = {f: os.path.join(font_dir, f) for f in PRETRAIN_FONTS + HELDOUT_FONTS}
        self.handwritten = load_digits()
        self._glyph_cache: dict[tuple[str, str, int], np.ndarray] = {}
        self.ys, self.xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    def shape(self, name: str, d: int, angle: float) -> np.ndarray:
        """Soft alpha mask (d x d, float in [0, 1]), drawn 4x larger then box-filtered."""
        big = 4 * d
        img = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(img)
        if name in ("circle", "moon"):
            draw.ellipse([0, 0, big - 1, big - 1], fill=255)
            if name == "moon":
                o = int(0.4 * big)  # offset of the bite that leaves a crescent
                draw.ellipse([o, -int(0.1 * big), big - 1 + o, int(0.9 * big)], fill=0)
        else:
            th = np.deg2rad(angle)
            rot = _unit_polygon(name) @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
            draw.polygon([tuple(p) for p in (rot * 0.5 + 0.5) * (big - 1)], fill=255)
        if name in ("circle", "moon") and angle:
            img = img.rotate(angle)
        return np.asarray(img.resize((d, d), Image.Resampling.BOX), np.float32) / 255.0

    def glyph(self, font: str, char: str, height: int) -> np.ndarray:
        key = (font, char, height)
        if key not in self._glyph_cache:
            pil_font = ImageFont.truetype(self.font_paths[font], 4 * height)
            img = Image.new("L", (8 * height, 8 * height), 0)
            ImageDraw.Draw(img).text((height, height), char, fill=255, font=pil_font)
            img = img.crop(img.getbbox())
            w = max(2, min(SIZE - 2, round(img.width * height / img.height)))
            small = img.resize((w, height), Image.Resampling.BOX)
            self._glyph_cache[key] = np.asarray(small, np.float32) / 255.0
        return self._glyph_cache[key]

    def handwritten_digit(self, index: int, px: int) -> np.ndarray:
        img = Image.fromarray((self.handwritten.images[index] * 255 / 16).astype(np.uint8))
        return np.asarray(img.resize((px, px), Image.Resampling.BILINEAR), np.float32) / 255.0

    def texture(self, kind: str, rng: np.random.Generator, heldout: bool) -> np.ndarray:
        """Texture pattern t in [0, 1] (32 x 32); held-out styles change scale and angle."""
        xs, ys = self.xs, self.ys
        if kind == "plain":
            return np.zeros((SIZE, SIZE), np.float32)
        if kind == "noise":
            cell = int(rng.choice([3, 4])) if heldout else 1
            n = -(-SIZE // cell)
            return np.kron(rng.random((n, n)), np.ones((cell, cell)))[:SIZE, :SIZE]
        if kind == "gradient":
            if heldout:
                cx, cy = rng.uniform(0, SIZE, 2)
                return np.clip(np.hypot(xs - cx, ys - cy) / SIZE, 0, 1)
            t = xs / (SIZE - 1) if rng.random() < 0.5 else ys / (SIZE - 1)
            return t if rng.random() < 0.5 else 1 - t
        angle = rng.uniform(20, 70) + 90 * rng.integers(0, 2) if heldout else 90 * rng.integers(0, 2)
        th = np.deg2rad(angle)
        u, v = xs * np.cos(th) + ys * np.sin(th), -xs * np.sin(th) + ys * np.cos(th)
        if kind == "stripes":
            period = rng.choice([3, 11]) if heldout else rng.integers(5, 9)
            return (((u / period) + rng.random()) % 1 < 0.5).astype(np.float32)
        if kind == "checker":
            cell = rng.choice([2, 7]) if heldout else rng.integers(4, 6)
            return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        period = rng.choice([4, 11]) if heldout else rng.integers(6, 9)
        du, dv = ((c + rng.random() * period) % period - period / 2 for c in (u, v))
        return (np.hypot(du, dv) < period * 0.22).astype(np.float32)


_A = 0.33  # half-width of the cross's arms
_POLYGONS = {  # vertices in [-1, 1]^2, y pointing down
    "square": [[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]],
    "triangle": [[0.0, -0.95], [0.95, 0.8], [-0.95, 0.8]],
    "diamond": [[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]],
    "cross": [
        [-_A, -1],
        [_A, -1],
        [_A, -_A],
        [1, -_A],
        [1, _A],
        [_A, _A],
        [_A, 1],
        [-_A, 1],
        [-_A, _A],
        [-1, _A],
        [-1, -_A],
        [-_A, -_A],
    ],
}


def _unit_polygon(name: str) -> np.ndarray:
    if name in _POLYGONS:
        return np.array(_POLYGONS[name], np.float64)
    if name == "star":
        t = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t) + 0.1], 1)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)  # heart
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x / 17, (y + 2) / 17], 1)


class _Scene:
    """One image under construction: a background plus alpha-composited foreground layers."""

    def __init__(
        self,
        painter: _Painter,
        rng: np.random.Generator,
        texture: str,
        heldout_tex: bool,
        paper: bool = False,
    ) -> None:
        self.rng = rng
        # ink on paper (a held-out glyph style) has a light, low-contrast background
        lo, hi, jitter, step = (200, 250, 5, (-40, -20)) if paper else (15, 60, 6, (55, 95))
        c1 = rng.uniform(lo, hi) + rng.normal(0, jitter, 3)
        c2 = c1 + rng.uniform(*step)
        t = painter.texture(TEXTURES[texture], rng, heldout_tex)[..., None]
        self.img = (c1 * (1 - t) + c2 * t).astype(np.float32)

    def paste(self, alpha: np.ndarray, rgb: np.ndarray, cx: float, cy: float) -> None:
        """Composite ``alpha`` centred at fractional position (cx, cy), clipped to the canvas."""
        h, w = alpha.shape
        y0 = int(np.clip(round(cy * SIZE - h / 2), 0, SIZE - h))
        x0 = int(np.clip(round(cx * SIZE - w / 2), 0, SIZE - w))
        a, region = alpha[..., None], self.img[y0 : y0 + h, x0 : x0 + w]
        self.img[y0 : y0 + h, x0 : x0 + w] = region * (1 - a) + rgb * a

    def done(self) -> np.ndarray:
        return np.clip(self.img + self.rng.normal(0, 3, self.img.shape), 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, name: str, heldout: bool) -> np.ndarray:
    rgb = np.array(COLOURS[name], np.float32)
    if heldout:  # dark or pastel variants never shown in pretraining
        rgb = rgb * 0.5 if rng.random() < 0.5 else 0.45 * rgb + 0.55 * 255
    return np.clip(rgb + rng.normal(0, 10, 3), 0, 255)


def _pick(rng: np.random.Generator, seq: tuple | list | dict) -> str:
    return list(seq)[int(rng.integers(len(seq)))]


def _maybe(rng: np.random.Generator, p: float, text: str) -> str:
    return text if rng.random() < p else ""


def _objects(
    p: _Painter,
    rng: np.random.Generator,
    *,
    shapes: list[str],
    colours: list[str],
    texture: str,
    size: str | None = None,
    position: str | None = None,
    heldout: str = "",
) -> np.ndarray:
    """``len(shapes)`` objects (several: in distinct quadrants); ``heldout`` in colour/rotate/texture."""
    scene = _Scene(p, rng, texture, "texture" in heldout)
    n = len(shapes)
    slots = rng.permutation(4)[:n]
    for i, (shape, colour) in enumerate(zip(shapes, colours)):
        sz = size or ("small" if n > 2 else _pick(rng, SIZES))
        lo, hi = SIZES[sz]
        d = int(rng.integers(lo, hi + 1)) if n == 1 else int(rng.integers(7, 11 if n > 2 else 13))
        angle = rng.uniform(-25, 25) if "rotate" in heldout else 0.0
        if n == 1:
            cx, cy = POSITIONS[position] if position else rng.uniform(0.3, 0.7, 2)
        else:
            cx, cy = 0.27 + 0.46 * (slots[i] % 2), 0.27 + 0.46 * (slots[i] // 2)
        cx, cy = np.array([cx, cy]) + rng.normal(0, 0.03, 2)
        scene.paste(p.shape(shape, d, angle), _colour(rng, colour, "colour" in heldout), cx, cy)
    return scene.done()


def _row(p: _Painter, rng: np.random.Generator, n: int, texture: str) -> np.ndarray:
    """Held-out counting style: ``n`` small objects of mixed shapes and colours side by side in one
    row or column. Pretraining only shows same-looking objects in separate quadrants, so a model
    that counts occupied quadrants fails here until it is fine-tuned."""
    scene = _Scene(p, rng, texture, False)
    d = int(rng.integers(5, 8))
    gap = (d + int(rng.integers(1, 3))) / SIZE
    along = 0.5 + (np.arange(n) - (n - 1) / 2) * gap + rng.uniform(-0.08, 0.08)
    across = rng.uniform(0.3, 0.7)
    vertical = rng.random() < 0.5
    for a in along:
        cx, cy = (across, a) if vertical else (a, across)
        scene.paste(p.shape(_pick(rng, SHAPES), d, 0.0), _colour(rng, _pick(rng, COLOURS), False), cx, cy)
    return scene.done()


def _glyph_image(
    p: _Painter, rng: np.random.Generator, alpha: np.ndarray, colour: str, texture: str, paper: bool
) -> np.ndarray:
    scene = _Scene(p, rng, "plain" if paper else texture, False, paper=paper)
    rgb = _colour(rng, colour, False) * (0.3 if paper else 1.0)
    scene.paste(alpha, rgb, *rng.uniform(0.4, 0.6, 2))
    return scene.done()


def _pretraining_pair(p: _Painter, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (image, caption) pair of the pretraining stream: in-distribution styles only."""
    kind = rng.choice(
        ["objects", "texture", "letter", "digit", "handwritten"], p=[0.45, 0.08, 0.2, 0.1, 0.17]
    )
    texture, colour = _pick(rng, TEXTURES), _pick(rng, COLOURS)
    bg = _maybe(rng, 0.6, f" on a {texture} background")
    prefix = _pick(rng, PREFIXES)
    if kind == "objects":
        shape = _pick(rng, SHAPES)
        n = 1 if rng.random() < 0.55 else int(rng.integers(2, 5))
        if n == 1:
            size, position = _pick(rng, SIZES), _pick(rng, POSITIONS)
            img = _objects(
                p, rng, shapes=[shape], colours=[colour], texture=texture, size=size, position=position
            )
            words = [
                _maybe(rng, 0.5, size),
                _maybe(rng, 0.7, colour),
                shape if rng.random() < 0.8 else "object",
            ]
            phrase = " ".join(w for w in words if w)
            article = "one" if rng.random() < 0.3 else ("an" if phrase[0] in "aeiou" else "a")
            text = f"{article} {phrase}{_maybe(rng, 0.5, ' ' + position)}"
        else:
            img = _objects(p, rng, shapes=[shape] * n, colours=[colour] * n, texture=texture)
            noun = PLURALS[shape] if rng.random() < 0.8 else "objects"
            text = f"{NUMBERS[n] if rng.random() < 0.8 else 'some'} {_maybe(rng, 0.7, colour + ' ')}{noun}"
        return img, prefix + text + bg
    if kind == "texture":
        img = (
            _objects(p, rng, shapes=[_pick(rng, SHAPES)], colours=[colour], texture=texture, size="small")
            if rng.random() < 0.5
            else _Scene(p, rng, texture, False).done()
        )
        return img, f"{prefix}a {texture} background"
    if kind == "handwritten":
        label = int(rng.integers(*DIGIT_RANGES["pretrain"]))
        digit = int(p.handwritten.target[label])
        img = _glyph_image(
            p, rng, p.handwritten_digit(label, int(rng.integers(16, 27))), colour, texture, False
        )
        name = _pick(
            rng,
            [
                f"the handwritten digit {NUMBERS[digit]}",
                f"a handwritten {NUMBERS[digit]}",
                f"the number {NUMBERS[digit]}",
            ],
        )
        return img, prefix + name + _maybe(rng, 0.5, f" in {colour}") + bg
    char = _pick(rng, LETTERS) if kind == "letter" else str(int(rng.integers(10)))
    alpha = p.glyph(_pick(rng, PRETRAIN_FONTS), char, int(rng.integers(14, 25)))
    img = _glyph_image(p, rng, alpha, colour, texture, False)
    name = (
        f"the letter {char.lower()}"
        if kind == "letter"
        else _pick(rng, [f"the number {NUMBERS[int(char)]}", f"the digit {NUMBERS[int(char)]}"])
    )
    return img, prefix + name + _maybe(rng, 0.5, f" in {colour}") + bg


def pretraining_batches(seed: int, batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless stream of (uint8 images B x 32 x 32 x 3, captions); deterministic given ``seed``."""
    painter, rng = _Painter(), np.random.default_rng(seed)
    while True:
        pairs = [_pretraining_pair(painter, rng) for _ in range(batch_size)]
        yield np.stack([im for im, _ in pairs]), [c for _, c in pairs]


_PHOTO = ("a photo of {}.", "{}.", "an image of {}.", "a picture of {}.")
_NUMBER = (
    "a photo of the number {}.",
    "the number {}.",
    "a handwritten {}.",
    "the handwritten digit {}.",
    "the digit {}.",
)
_COUNTS = ("one object", "two objects", "three objects", "four objects")
DOMAINS: dict[str, DomainSpec] = {
    d.name: d
    for d in [  # description = what is held out of pretraining
        DomainSpec(
            "colour", tuple(COLOURS), tuple(t.format("a {} object") for t in _PHOTO), 0.7, "dark/pastel"
        ),
        DomainSpec("count", _COUNTS, _PHOTO, 0.8, "rows of small mixed objects"),
        DomainSpec("digit", NUMBERS, _NUMBER, 0.5, "sklearn digits of unseen writers; ink on paper"),
        DomainSpec(
            "letter",
            LETTERS[:10],
            tuple(t.format("the letter {}") for t in _PHOTO),
            0.7,
            "A-J; unseen fonts, lower case, ink on paper",
        ),
        DomainSpec("shape", SHAPES, tuple(t.format("a {}") for t in _PHOTO), 0.7, "rotated; dark/pastel"),
        DomainSpec(
            "texture",
            tuple(TEXTURES),
            tuple(t.format("a {} background") for t in _PHOTO),
            0.7,
            "new scales and angles",
        ),
        DomainSpec(
            "cil_letters",
            LETTERS[:20],
            tuple(t.format("the letter {}") for t in _PHOTO),
            0.7,
            "CIL-micro, letters A-T; as 'letter'",
        ),
    ]
}
MTIL_MICRO_ORDERS = {
    "order1": ["colour", "count", "digit", "letter", "shape", "texture"],  # alphabetical, as ZSCL
    "order2": ["shape", "digit", "texture", "colour", "letter", "count"],
}
CIL_MICRO = "cil_letters"


def micro_domains() -> dict[str, DomainSpec]:
    """The MTIL-micro domains and the CIL-micro domain by name."""
    return dict(DOMAINS)


def cil_micro_steps(n_steps: int, seed: int = 1993) -> list[list[int]]:
    """CIL-micro class order (a seeded permutation, as in the thesis §3.5.1.1) cut into equal steps."""
    n = DOMAINS[CIL_MICRO].n_classes
    if n_steps <= 0 or n % n_steps:
        raise DataError("cil_micro_steps", f"n_steps={n_steps}", f"a positive divisor of {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return [order[i : i + n // n_steps] for i in range(0, n, n // n_steps)]


def _domain_image(
    p: _Painter, rng: np.random.Generator, domain: str, label: int, heldout: bool, split: str
) -> np.ndarray:
    texture, colour, shape = _pick(rng, TEXTURES), _pick(rng, COLOURS), _pick(rng, SHAPES)
    if domain == "shape":
        return _objects(
            p,
            rng,
            shapes=[SHAPES[label]],
            colours=[colour],
            texture=texture,
            heldout="rotate colour" if heldout else "",
        )
    if domain == "colour":
        return _objects(
            p,
            rng,
            shapes=[shape],
            colours=[list(COLOURS)[label]],
            texture=texture,
            heldout="colour" if heldout else "",
        )
    if domain == "count":
        n = label + 1
        if heldout:
            return _row(p, rng, n, texture)
        return _objects(p, rng, shapes=[shape] * n, colours=[colour] * n, texture=texture)
    if domain == "texture":
        tex = list(TEXTURES)[label]
        if rng.random() < 0.5:
            return _objects(
                p,
                rng,
                shapes=[shape],
                colours=[colour],
                texture=tex,
                size="small",
                heldout="texture" if heldout else "",
            )
        return _Scene(p, rng, tex, heldout).done()
    if domain == "digit":
        lo, hi = DIGIT_RANGES[split]
        index = lo + int(rng.choice(np.flatnonzero(p.handwritten.target[lo:hi] == label)))
        alpha = p.handwritten_digit(index, int(rng.integers(16, 27)))
        return _glyph_image(p, rng, alpha, colour, texture, paper=heldout)
    style = int(rng.integers(3)) if heldout else -1  # letters: 0 unseen font, 1 lower case, 2 paper
    char = LETTERS[label].lower() if style == 1 else LETTERS[label]
    font = _pick(rng, HELDOUT_FONTS if style == 0 else PRETRAIN_FONTS)
    alpha = p.glyph(font, char, int(rng.integers(14, 25)))
    return _glyph_image(p, rng, alpha, colour, texture, paper=style == 2)


def make_split(
    domain: str, split: str, n: int, seed: int = 0, heldout_fraction: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class-balanced images of a domain: (uint8 N x 32 x 32 x 3, int64 labels).

    Deterministic in its arguments; train and test use disjoint random streams and digit writers.
    ``heldout_fraction`` overrides the domain's share of held-out-style images (1.0 = only those).
    """
    if domain not in DOMAINS:
        raise UnknownNameError(
            f"micro domain '{domain}'",
            "is not a known domain" + closest(domain, DOMAINS),
            f"one of: {', '.join(DOMAINS)}",
        )
    if split not in ("train", "test"):
        raise DataError(f"micro/{domain}", f"split '{split}'", "'train' or 'test'")
    if n <= 0:
        raise DataError(f"micro/{domain}", f"n={n}", "a positive number of images")
    spec = DOMAINS[domain]
    frac = spec.heldout_fraction if heldout_fraction is None else heldout_fraction
    rng = np.random.default_rng([seed, list(DOMAINS).index(domain), ["train", "test"].index(split)])
    labels = rng.permutation(np.arange(n) % spec.n_classes)
    heldout = rng.random(n) < frac
    painter = _Painter()  # glyph cache local to this call
    images = np.stack(
        [_domain_image(painter, rng, domain, int(y), bool(h), split) for y, h in zip(labels, heldout)]
    )
    return images, labels.astype(np.int64)


def vocabulary_words() -> list[str]:
    """Every word a caption, class name or template can contain (sorted, lower case)."""
    parts = [
        *SHAPES,
        *PLURALS.values(),
        *COLOURS,
        *TEXTURES,
        *NUMBERS,
        *POSITIONS,
        *SIZES,
        *PREFIXES,
        *(c.lower() for c in LETTERS),
        "a an one some object objects background the letter number digit handwritten in on",
    ]
    for spec in DOMAINS.values():
        parts += [*spec.classnames, *spec.templates]
    return sorted({w for part in parts for w in tokenize_words(part)})


def tokenize_words(text: str) -> list[str]:
    """Lower-case words of ``text`` (punctuation and ``{}`` placeholders dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


# The registered builder returns the `DomainSpec`; images come from `make_split(name, ...)`.
for _name in DOMAINS:
    register("dataset", f"micro/{_name}")(functools.partial(DOMAINS.__getitem__, _name))
