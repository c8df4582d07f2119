"""Words for every procedural shape: captions made from its spec and albedo, for text-to-3-D.

A caption is built in two steps. `describe(spec, albedo)` reads off the facts — the family of the
main part, its proportions, its size, its colour, and what a union or difference adds — and
`captions_for` puts some of those facts into one of several sentence templates, with synonyms,
deterministically from a seed. Every word can be checked against the spec:

- Proportions are INTRINSIC: shapes are randomly rotated, so "tall" means long along the
  primitive's own axis (y for the cylinder, cone, capsule and torus), never world up. `extents`
  gives the local half-extents and `elongation` their longest / shortest ratio; `proportion`
  the category ("long", "flat", "short", "thin", "thick" or None) that the words come from.
  The thresholds in `_PROPORTION` were chosen from the ranges in shapes._random_params so each
  word fits roughly a fifth to a third of a family and the middle stays undescribed.
- Size is from shapes.bounding_radius: "small" at most 0.48 and "large" at least 0.64 (the
  lowest and highest fifth of random_shapes).
- Colour is the nearest palette anchor in CIE Lab (plain Euclidean distance, D65), treating the
  albedo as sRGB because the dataset writes albedo x shading straight into 8-bit pixels.
  The dataset draws each channel from [0.35, 1], so its colours are pastel: each chromatic name
  has a saturated anchor and a light one, so a light red is still "red", not "pink" or "grey".
- A difference that really cuts its first part (at least 3 % of its volume, measured on a grid)
  reads "a box with a round hole" (a round cutter) or "... with a box-shaped notch"; a union
  whose second part shows (adds at least 3 % of the volume) reads "a sphere joined to a cone".
  Otherwise the shape is described as the one part that shows.

Held-out sets, for measuring generalisation:
- Template phrasing: `HELDOUT_TEMPLATES` are never used for training captions.
- Unseen combinations: `UNSEEN_PAIRS` lists (attribute, family) pairs. No training caption
  contains a word of the attribute together with any word naming the family (a token-level rule
  that `unseen_pair_violations` checks): a green torus is captioned "a torus" or "a green shape"
  in training, never "a green torus". `captions_for(..., split="unseen")` gives the captions that
  do use the pair, for primitives that really have it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from flowsdf.data import shapes
from flowsdf.errors import FlowSDFError

SPLITS = ("train", "heldout_templates", "unseen")

# ---------------------------------------------------------------------------------------------
# words

FAMILY_NOUNS: dict[str, list[str]] = {
    "sphere": ["sphere", "ball", "orb"],
    "box": ["box", "block", "cuboid"],
    "rounded_box": ["rounded box", "rounded block", "box with rounded edges"],
    "torus": ["torus", "ring", "donut", "doughnut"],
    "cylinder": ["cylinder", "cylindrical shape"],
    "cone": ["cone", "conical shape"],
    "capsule": ["capsule", "pill", "pill shape"],
    "ellipsoid": ["ellipsoid", "oval shape"],
    "octahedron": ["octahedron", "diamond", "double pyramid"],
}
CUBE_NOUNS = {"box": ["cube"], "rounded_box": ["rounded cube"]}  # only when the sides are near equal
GENERIC_NOUNS = ["shape", "object", "solid"]

# Every word that names a family, for the unseen-pair rule: any of these in a caption counts as
# naming the family, wherever it stands ("a sphere with a box-shaped notch" names the box).
FAMILY_WORDS: dict[str, frozenset[str]] = {
    "sphere": frozenset({"sphere", "ball", "orb", "spherical"}),
    "box": frozenset({"box", "block", "cuboid", "cube", "rectangular", "square"}),
    "torus": frozenset({"torus", "ring", "donut", "doughnut"}),
    "cylinder": frozenset({"cylinder", "cylindrical"}),
    "cone": frozenset({"cone", "conical"}),
    "capsule": frozenset({"capsule", "pill"}),
    "ellipsoid": frozenset({"ellipsoid", "oval"}),
    "octahedron": frozenset({"octahedron", "diamond", "pyramid"}),
}

# Proportion words by family and category. Categories never share a word, so a word tells its
# category. "tall" is kept for the upright solids of revolution (cylinder, cone).
PROPORTION_WORDS: dict[str, dict[str, list[str]]] = {
    "cylinder": {"long": ["tall", "long", "elongated", "slender"], "flat": ["squat", "wide", "flat"]},
    "cone": {"long": ["tall", "slender", "narrow"], "flat": ["squat", "wide", "flat"]},
    "capsule": {"long": ["long", "elongated", "slender"], "short": ["short", "stubby"]},
    "torus": {"thin": ["thin", "slim"], "thick": ["thick", "chunky", "fat"]},
    "box": {"long": ["long", "elongated"], "flat": ["flat", "flattened"]},
    "rounded_box": {"long": ["long", "elongated"], "flat": ["flat", "flattened"]},
    "ellipsoid": {"long": ["long", "elongated"], "flat": ["flat", "flattened", "squashed"]},
}
# Two words for one fact, for "a red cylinder, tall and slender"; both from the same category.
PROPORTION_PAIRS: dict[str, dict[str, list[str]]] = {
    "cylinder": {"long": ["tall and slender", "long and narrow"], "flat": ["squat and wide", "flat and wide"]},
    "cone": {"long": ["tall and narrow", "tall and slender"], "flat": ["squat and wide", "flat and wide"]},
    "capsule": {"long": ["long and slender", "long and narrow"], "short": ["short and stubby"]},
    "torus": {"thin": ["thin and slim"], "thick": ["thick and chunky"]},
    "box": {"long": ["long and narrow"], "flat": ["flat and wide"]},
    "rounded_box": {"long": ["long and narrow"], "flat": ["flat and wide"]},
    "ellipsoid": {"long": ["long and narrow"], "flat": ["flat and wide", "squashed and flat"]},
}
CATEGORY_WORDS: dict[str, frozenset[str]] = {}
for _table in (PROPORTION_WORDS, PROPORTION_PAIRS):
    for _family_words in _table.values():
        for _category, _phrases in _family_words.items():
            _new = {w for p in _phrases for w in p.split() if w != "and"}
            CATEGORY_WORDS[_category] = CATEGORY_WORDS.get(_category, frozenset()) | _new

SIZE_WORDS = {"small": ["small", "little"], "large": ["large", "big"]}
SMALL_RADIUS, LARGE_RADIUS = 0.48, 0.64  # shapes.bounding_radius: lowest / highest fifth

# (name, sRGB anchor). A name may have several anchors: a saturated one and the light tint that
# the dataset's albedo range [0.35, 1] actually produces.
PALETTE: list[tuple[str, tuple[float, float, float]]] = [
    ("red", (0.85, 0.15, 0.15)), ("red", (1.0, 0.4, 0.38)),
    ("orange", (0.95, 0.55, 0.1)), ("orange", (1.0, 0.68, 0.38)),
    ("yellow", (0.95, 0.9, 0.2)), ("yellow", (1.0, 0.95, 0.42)),
    ("green", (0.2, 0.7, 0.2)), ("green", (0.45, 0.85, 0.4)),
    ("cyan", (0.2, 0.85, 0.85)), ("cyan", (0.42, 0.92, 0.95)),
    ("blue", (0.2, 0.3, 0.9)), ("blue", (0.42, 0.55, 1.0)),
    ("purple", (0.55, 0.25, 0.75)), ("purple", (0.72, 0.45, 0.95)),
    ("pink", (1.0, 0.6, 0.75)), ("pink", (0.95, 0.45, 0.75)),
    ("white", (0.95, 0.95, 0.95)),
    ("grey", (0.55, 0.55, 0.55)), ("grey", (0.72, 0.72, 0.72)),
    ("brown", (0.55, 0.35, 0.2)), ("brown", (0.72, 0.55, 0.4)),
]
COLOUR_WORDS: dict[str, list[str]] = {name: [name] for name, _ in PALETTE}
COLOUR_WORDS["grey"] = ["grey", "gray"]

# What a difference's cutter leaves, by the cutter's family; a round cutter always says "hole".
CUT_PHRASES: dict[str, list[str]] = {
    "sphere": ["a round hole", "a spherical hole", "a round hole cut into it"],
    "ellipsoid": ["a round hole", "an oval hole", "a round hole cut into it"],
    "cylinder": ["a round hole", "a cylindrical hole", "a round hole cut into it"],
    "capsule": ["a round hole", "a hole", "a round hole cut into it"],
    "torus": ["a round hole", "a hole", "a curved hole"],
    "cone": ["a cone-shaped hole", "a conical hole"],
    "box": ["a box-shaped notch", "a square notch", "a rectangular notch"],
    "rounded_box": ["a box-shaped notch", "a square notch"],
    "octahedron": ["a pointed notch", "a diamond-shaped notch"],
}
JOIN_PHRASES = ["joined to", "fused with", "attached to"]

# Templates. Fields: {adjs} (size, proportion, colour, space-separated, maybe empty), {noun},
# {comp} (" with a round hole" / " joined to a cone" / ""), {comp_c} (the same after a comma, for
# templates whose adjectives follow the noun: "a pill, long and green, joined to a ball"),
# {generic} ("shape"), {colour}, {props_and} (size and proportion joined by "and"), {all_and}
# (every adjective), {prop2} ("tall and slender"). A template is used only when the fields it
# names are filled.
TRAIN_TEMPLATES = [
    "a {adjs} {noun}{comp}",
    "{adjs} {noun}{comp}",
    "a {colour} {noun}, {props_and}{comp_c}",
    "a {noun} that is {all_and}{comp_c}",
    "a {adjs} {generic}{comp}",
    "a 3d model of a {adjs} {noun}{comp}",
    "a {colour} {noun}, {prop2}{comp_c}",
    "a {noun}, coloured {colour}{comp_c}",
]
HELDOUT_TEMPLATES = [
    "a {noun} in {colour}{comp_c}",
    "there is a {adjs} {noun}{comp}",
    "a rendering of a {adjs} {noun}{comp}",
    "a {noun}{comp}; it is {all_and}",
]


@dataclass(frozen=True)
class UnseenPair:
    """An attribute (a colour name or a proportion category) never said of a family in training."""

    attribute: str
    family: str

    @property
    def attribute_words(self) -> frozenset[str]:
        if self.attribute in COLOUR_WORDS:
            return frozenset(COLOUR_WORDS[self.attribute])
        return CATEGORY_WORDS[self.attribute]


# Chosen among frequent colours and words so each pair has evaluation shapes in a 1,000-shape set.
UNSEEN_PAIRS: tuple[UnseenPair, ...] = (
    UnseenPair("green", "torus"),
    UnseenPair("pink", "cylinder"),
    UnseenPair("blue", "sphere"),
    UnseenPair("cyan", "box"),
    UnseenPair("long", "cylinder"),
    UnseenPair("flat", "ellipsoid"),
)


# ---------------------------------------------------------------------------------------------
# facts from the spec


def _main(spec: shapes.Spec) -> shapes.Spec:
    """The primitive a (possibly nested) CSG spec is mostly made of: its first operand."""
    return spec if "op" not in spec else _main(spec["a"])


def extents(spec: shapes.Spec) -> tuple[float, float, float]:
    """Half-extents (x, y, z) of the main primitive along its OWN axes (y is the axis of the
    cylinder, cone, capsule and torus); rotation and translation do not change them."""
    prim = _main(spec)
    p = prim["params"]
    kind = prim["kind"]
    if kind == "sphere":
        return (p["radius"],) * 3
    if kind in ("box", "rounded_box"):
        return tuple(p["half"])
    if kind == "torus":
        outer = p["major"] + p["minor"]
        return (outer, p["minor"], outer)
    if kind in ("cylinder", "cone"):
        return (p["radius"], p["half_height"], p["radius"])
    if kind == "capsule":
        return (p["radius"], p["half_length"] + p["radius"], p["radius"])
    if kind == "ellipsoid":
        return tuple(p["radii"])
    if kind == "octahedron":
        return (p["size"],) * 3
    raise FlowSDFError(f"unknown primitive {kind!r}")


def elongation(spec: shapes.Spec) -> float:
    """Longest / shortest intrinsic half-extent of the main primitive (1 for a sphere)."""
    e = extents(spec)
    return max(e) / min(e)


# category: (lower threshold, upper threshold) on the family's ratio; see `_ratio`.
_PROPORTION: dict[str, tuple[float, float]] = {
    "cylinder": (0.9, 1.5),  # half_height / radius: flat <= 0.9 (18 %), long >= 1.5 (28 %)
    "cone": (0.85, 1.25),  # half_height / radius: flat 18 %, long 25 %
    "capsule": (1.9, 2.5),  # (half_length + radius) / radius: short 22 %, long 27 %
    "torus": (0.3, 0.4),  # minor / major: thin <= 0.3 (25 %), thick >= 0.4 (25 %)
}
# Boxes and ellipsoids: sorted half-extents a <= b <= c; long when c/b >= T, flat when
# b/a >= T, the larger ratio deciding (long 20-24 %, flat 25-33 %).
_SORTED_THRESHOLD = {"box": 1.3, "rounded_box": 1.25, "ellipsoid": 1.45}
_CUBE_RATIO = 1.15  # a box whose longest / shortest side is at most this may be called a cube


def proportion(spec: shapes.Spec) -> str | None:
    """The proportion category of the main primitive, or None when it is unremarkable."""
    kind = _main(spec)["kind"]
    x, y, _ = extents(spec)
    if kind in ("cylinder", "cone", "capsule"):
        lo, hi = _PROPORTION[kind]
        ratio = y / x  # axial / radial
        small_word = "short" if kind == "capsule" else "flat"
        return "long" if ratio >= hi else small_word if ratio <= lo else None
    if kind == "torus":
        p = _main(spec)["params"]
        lo, hi = _PROPORTION[kind]
        ratio = p["minor"] / p["major"]
        return "thin" if ratio <= lo else "thick" if ratio >= hi else None
    if kind in _SORTED_THRESHOLD:
        a, b, c = sorted(extents(spec))
        t = _SORTED_THRESHOLD[kind]
        if c / b >= t and c / b >= b / a:
            return "long"
        if b / a >= t:
            return "flat"
    return None


def is_cube_like(spec: shapes.Spec) -> bool:
    return _main(spec)["kind"] in CUBE_NOUNS and elongation(spec) <= _CUBE_RATIO


def size_word(spec: shapes.Spec) -> str | None:
    r = shapes.bounding_radius(spec)
    return "small" if r <= SMALL_RADIUS else "large" if r >= LARGE_RADIUS else None


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> (..., 3) CIE Lab (D65 white)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE_LAB = _srgb_to_lab(np.array([rgb for _, rgb in PALETTE]))  # (K, 3)


def _albedo(albedo: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(albedo, torch.Tensor):
        albedo = albedo.detach().cpu().numpy()
    a = np.asarray(albedo, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise FlowSDFError(f"albedo must be 3 numbers in [0, 1], got {albedo!r}")
    return a


def colour_name(albedo: Sequence[float] | np.ndarray | torch.Tensor) -> str:
    """The palette name nearest to `albedo` (sRGB in [0, 1]) in CIE Lab."""
    lab = _srgb_to_lab(_albedo(albedo))
    return PALETTE[int(((_PALETTE_LAB - lab) ** 2).sum(-1).argmin())][0]


_GRID_N = 32  # 32^3 points over the shapes' ball: a part smaller than ~1 % of it can be missed
_MIN_CUT = 0.03  # share of the first part a difference must remove to be called a hole
_MIN_PART = 0.03  # share of a union's volume a part must add to be named


def _grid() -> torch.Tensor:
    t = torch.linspace(-shapes.MAX_RADIUS, shapes.MAX_RADIUS, _GRID_N)
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)  # (G, 3)


def _structure(spec: shapes.Spec) -> tuple[str | None, shapes.Spec, shapes.Spec | None]:
    """(op, main part, other part) of what SHOWS: a difference that barely touches its first
    part, or a union whose part is swallowed by the other, reads as the one primitive."""
    if "op" not in spec:
        return None, spec, None
    grid = _grid()
    with torch.no_grad():
        a = shapes.sdf(spec["a"], grid) < 0  # (G,)
        b = shapes.sdf(spec["b"], grid) < 0  # (G,)
    a_n, both, union = int(a.sum()), int((a & b).sum()), int((a | b).sum())
    if spec["op"] == "difference":
        if a_n == 0 or both < _MIN_CUT * a_n:
            return None, _main(spec["a"]), None
        return "difference", _main(spec["a"]), _main(spec["b"])
    if union == 0 or (union - a_n) < _MIN_PART * union:
        return None, _main(spec["a"]), None
    if (a_n - both) < _MIN_PART * union:  # the second part swallows the first
        return None, _main(spec["b"]), None
    return "union", _main(spec["a"]), _main(spec["b"])


@dataclass(frozen=True)
class Description:
    """The facts a caption may say; every field is derived from the spec and albedo."""

    kind: str  # family of the main (or only visible) primitive
    op: str | None  # "union" / "difference" when the second part shows, else None
    other: str | None  # family of the second part
    proportion: str | None  # category of the main primitive, see `proportion`
    elongation: float
    cube: bool
    size: str | None  # "small" / "large" / None
    colour: str


def describe(spec: shapes.Spec, albedo: Sequence[float] | np.ndarray | torch.Tensor) -> Description:
    op, main, other = _structure(spec)
    return Description(
        kind=main["kind"],
        op=op,
        other=other["kind"] if other is not None else None,
        proportion=proportion(main),
        elongation=elongation(main),
        cube=is_cube_like(main),
        size=size_word(spec),
        colour=colour_name(albedo),
    )


# ---------------------------------------------------------------------------------------------
# sentences


def words(caption: str) -> list[str]:
    """Lower-case word tokens of a caption (punctuation and hyphens split words)."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def unseen_pair_violations(captions: Sequence[str]) -> list[tuple[str, UnseenPair]]:
    """Every (caption, pair) where a caption says a held-out attribute AND names its family."""
    out = []
    for caption in captions:
        w = set(words(caption))
        out += [(caption, p) for p in UNSEEN_PAIRS if w & p.attribute_words and w & FAMILY_WORDS[p.family]]
    return out


def _unseen_pairs_of(d: Description) -> list[UnseenPair]:
    """The held-out pairs a shape really has (a lone primitive of that exact family)."""
    if d.op is not None:
        return []
    return [p for p in UNSEEN_PAIRS if p.family == d.kind and p.attribute in (d.colour, d.proportion)]


def _noun(kind: str, cube: bool, rng: np.random.Generator) -> str:
    options = FAMILY_NOUNS[kind] + (CUBE_NOUNS.get(kind, []) if cube else [])
    return str(rng.choice(options))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().replace(" ,", ",")
    return re.sub(r"\b(a|an) (?=(\w))", lambda m: ("an " if m.group(2) in "aeiou" else "a "), text)


@dataclass
class _Draft:
    """One caption's choices, before rendering; attributes set to None are left unsaid."""

    template: str
    size: str | None
    prop: str | None  # one word of the proportion category
    prop2: str | None  # two words of it, for the {prop2} templates
    colour: str | None
    noun: str
    generic: str
    comp: str

    def fields(self) -> dict[str, str] | None:
        props = [w for w in (self.size, self.prop) if w]
        adjs = props + ([self.colour] if self.colour else [])
        f = {"adjs": " ".join(adjs), "noun": self.noun, "comp": self.comp, "generic": self.generic,
             "comp_c": "," + self.comp if self.comp else "",
             "colour": self.colour or "", "props_and": _and(props) if props else "",
             "all_and": _and(adjs) if adjs else "",
             "prop2": self.prop2 or ""}
        needed = re.findall(r"{(\w+)}", self.template)
        if any(not f[k] for k in needed if k in ("colour", "props_and", "all_and", "prop2")):
            return None
        if "generic" in needed and not (f["adjs"] or self.comp):  # "a shape" says nothing
            return None
        return f

    def render(self) -> str:
        f = self.fields()
        assert f is not None
        return _article(self.template.format(**f))


def _draft(d: Description, templates: list[str], rng: np.random.Generator, force: UnseenPair | None) -> _Draft:
    """Random choices for one caption; `force` makes it say that pair's attribute and family."""
    prop_words = PROPORTION_WORDS.get(d.kind, {}).get(d.proportion or "", [])
    prop_pairs = PROPORTION_PAIRS.get(d.kind, {}).get(d.proportion or "", [])
    say_prop = bool(prop_words) and (rng.uniform() < 0.75 or (force is not None and force.attribute == d.proportion))
    say_colour = rng.uniform() < 0.8 or (force is not None and force.attribute == d.colour)
    size = str(rng.choice(SIZE_WORDS[d.size])) if d.size and rng.uniform() < 0.5 else None
    if d.op == "difference":
        comp = " with " + str(rng.choice(CUT_PHRASES[d.other]))
    elif d.op == "union":
        comp = f" {rng.choice(JOIN_PHRASES)} a {_noun(d.other, False, rng)}"
    else:
        comp = ""
    draft = _Draft(template="", size=size, prop=str(rng.choice(prop_words)) if say_prop else None,
                   prop2=str(rng.choice(prop_pairs)) if say_prop and prop_pairs else None,
                   colour=str(rng.choice(COLOUR_WORDS[d.colour])) if say_colour else None,
                   noun=_noun(d.kind, d.cube, rng), generic=str(rng.choice(GENERIC_NOUNS)), comp=comp)
    usable = [t for t in templates if replace(draft, template=t).fields() is not None]
    if force is not None:  # the family must be named, so no template with a generic noun
        usable = [t for t in usable if "{noun}" in t]
    return replace(draft, template=str(rng.choice(usable)))


def _scrub(draft: _Draft, templates: list[str], rng: np.random.Generator) -> _Draft:
    """Remove held-out pairs from a training draft: say the shape, or the attribute, not both."""
    while unseen_pair_violations([draft.render()]):
        pair = unseen_pair_violations([draft.render()])[0][1]
        in_noun = bool(set(words(draft.noun)) & FAMILY_WORDS[pair.family])
        if in_noun and rng.uniform() < 0.5 and "{noun}" in draft.template:
            # "a green shape": keep the attribute, drop the family's name
            draft = replace(draft, noun=draft.generic)
            continue
        if pair.attribute in COLOUR_WORDS:
            draft = replace(draft, colour=None)
        else:
            draft = replace(draft, prop=None, prop2=None)
        if draft.fields() is None:  # the template needed what was dropped: one that does not
            draft = replace(draft, template=next(t for t in templates if replace(draft, template=t).fields()))
    return draft


def captions_for(
    spec: shapes.Spec,
    albedo: Sequence[float] | np.ndarray | torch.Tensor,
    n: int = 5,
    seed: int = 0,
    split: str = "train",
) -> list[str]:
    """`n` captions of one shape, deterministic from `seed`, distinct while the templates allow.

    split "train": training templates, no held-out pair; "heldout_templates": phrasings never
    used in training (still no held-out pair); "unseen": captions that DO say a held-out pair the
    shape has — an empty list when it has none."""
    return _captions(describe(spec, albedo), n, seed, split)


def _captions(d: Description, n: int, seed: int, split: str) -> list[str]:
    if split not in SPLITS:
        raise FlowSDFError(f"caption split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 1:
        raise FlowSDFError(f"number of captions must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    pairs = _unseen_pairs_of(d)
    if split == "unseen" and not pairs:
        return []
    templates = HELDOUT_TEMPLATES if split == "heldout_templates" else TRAIN_TEMPLATES
    found: list[str] = []
    for attempt in range(20 * n):
        force = pairs[attempt % len(pairs)] if split == "unseen" else None
        draft = _draft(d, templates, rng, force)
        if split != "unseen":
            draft = _scrub(draft, templates, rng)
        caption = draft.render()
        if split == "unseen" and not unseen_pair_violations([caption]):
            continue  # the template left the pair's attribute out
        if caption not in found:
            found.append(caption)
        if len(found) == n:
            break
    return [found[i % len(found)] for i in range(n)] if found else []


@dataclass
class CaptionSplits:
    """Captions per shape: train[i] for training; the other two only for evaluation."""

    train: list[list[str]]
    heldout_templates: list[list[str]]
    unseen: list[list[str]]  # empty for shapes without a held-out pair


def split_captions(
    specs: Sequence[shapes.Spec], albedos: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    n: int = 5, seed: int = 0,
) -> CaptionSplits:
    """Captions of many shapes (e.g. a dataset split's `shapes` and `albedo`), each shape and
    split with its own seed drawn from `seed`."""
    if len(specs) != len(albedos):
        raise FlowSDFError(f"{len(specs)} shapes but {len(albedos)} albedos")
    seeds = np.random.SeedSequence(seed).spawn(len(specs))
    out: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for spec, albedo, ss in zip(specs, albedos, seeds):
        d = describe(spec, albedo)  # once: a CSG shape's description samples its SDF
        for split, child in zip(SPLITS, ss.spawn(len(SPLITS))):
            out[split].append(_captions(d, n, int(child.generate_state(1)[0]), split))
    return CaptionSplits(**out)


def vocabulary_phrases() -> list[str]:
    """Every literal phrase the captioner can emit; a tokenizer built from these knows every
    caption word."""
    out = [re.sub(r"{\w+}", " ", t) for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES]
    out += ["a an and"] + JOIN_PHRASES + GENERIC_NOUNS
    for table in (FAMILY_NOUNS, CUBE_NOUNS, CUT_PHRASES, SIZE_WORDS, COLOUR_WORDS):
        out += [w for v in table.values() for w in v]
    out += [w for v in PROPORTION_WORDS.values() for ws in v.values() for w in ws]
    return out


def word_shares(captions: Sequence[str]) -> dict[str, dict[str, float]]:
    """Share of captions that contain each family, proportion, size and colour word."""
    groups = {
        "family": set().union(*FAMILY_WORDS.values()),
        "proportion": set().union(*CATEGORY_WORDS.values()),
        "size": {w for ws in SIZE_WORDS.values() for w in ws},
        "colour": {w for ws in COLOUR_WORDS.values() for w in ws},
    }
    counts: Counter[str] = Counter(w for c in captions for w in set(words(c)))
    n = max(len(captions), 1)
    return {g: {w: counts[w] / n for w in sorted(ws, key=lambda w: -counts[w]) if counts[w]}
            for g, ws in groups.items()}
