import numpy as np
import pytest

from flowsdf.data import captions as C
from flowsdf.data import shapes
from flowsdf.errors import FlowSDFError

GREY = (0.6, 0.6, 0.6)


def prim(kind: str, rotation_seed: int = 0, translation=(0.0, 0.0, 0.0), **params) -> shapes.Spec:
    rot = shapes.random_rotation(np.random.default_rng(rotation_seed)).tolist()
    return {"kind": kind, "params": params, "rotation": rot, "translation": list(translation)}


def many(spec, albedo, n=12, seeds=range(4), split="train") -> list[str]:
    return [c for s in seeds for c in C.captions_for(spec, albedo, n, s, split)]


def said(captions: list[str], vocabulary) -> bool:
    return any(set(C.words(c)) & set(vocabulary) for c in captions)


# ---------------------------------------------------------------------------------------------
# the words agree with the spec


def test_tall_cylinder_is_long_never_flat_whatever_its_rotation():
    for rotation_seed in range(3):  # proportions are intrinsic: the random rotation must not matter
        spec = prim("cylinder", rotation_seed, radius=0.15, half_height=0.45)
        assert C.elongation(spec) == pytest.approx(3.0)
        assert C.proportion(spec) == "long"
        caps = many(spec, GREY)
        assert said(caps, {"tall", "long"})
        assert not said(caps, C.CATEGORY_WORDS["flat"] | C.CATEGORY_WORDS["short"])


def test_squat_cylinder_is_flat_never_tall():
    spec = prim("cylinder", radius=0.45, half_height=0.2)
    assert C.proportion(spec) == "flat"
    caps = many(spec, GREY)
    assert said(caps, C.CATEGORY_WORDS["flat"])
    assert not said(caps, C.CATEGORY_WORDS["long"])


def test_box_with_one_side_four_times_smaller_is_flat():
    spec = prim("box", 1, half=[0.4, 0.1, 0.4])
    assert C.proportion(spec) == "flat"
    assert C.elongation(spec) == pytest.approx(4.0)
    caps = many(spec, GREY)
    assert said(caps, {"flat"})
    assert not said(caps, C.CATEGORY_WORDS["long"])


def test_box_with_one_side_longer_is_long_and_equal_sides_may_be_a_cube():
    assert C.proportion(prim("box", half=[0.15, 0.5, 0.2])) == "long"
    cube = prim("box", half=[0.3, 0.31, 0.32])
    assert C.proportion(cube) is None and C.is_cube_like(cube)
    assert said(many(cube, GREY), {"cube"})
    assert not said(many(prim("box", half=[0.2, 0.3, 0.4]), GREY), {"cube"})


def test_ellipsoid_and_torus_and_capsule_proportions():
    assert C.proportion(prim("ellipsoid", radii=[0.2, 0.6, 0.25])) == "long"
    assert C.proportion(prim("ellipsoid", radii=[0.6, 0.15, 0.55])) == "flat"
    assert C.proportion(prim("ellipsoid", radii=[0.4, 0.42, 0.44])) is None
    assert C.proportion(prim("torus", major=0.5, minor=0.1)) == "thin"
    assert C.proportion(prim("torus", major=0.4, minor=0.2)) == "thick"
    assert C.proportion(prim("capsule", half_length=0.4, radius=0.15)) == "long"
    assert C.proportion(prim("capsule", half_length=0.1, radius=0.3)) == "short"
    assert C.proportion(prim("sphere", radius=0.5)) is None


@pytest.mark.parametrize("kind", sorted(C.PROPORTION_WORDS))
def test_each_proportion_word_fits_a_reasonable_share_of_its_family(kind):
    rng = np.random.default_rng(0)
    cats = [C.proportion(prim(kind, **shapes._random_params(kind, rng, 1.0))) for _ in range(600)]
    for cat in C.PROPORTION_WORDS[kind]:
        assert 0.1 <= cats.count(cat) / len(cats) <= 0.4, (kind, cat)
    assert cats.count(None) / len(cats) >= 0.3  # the middle stays undescribed


@pytest.mark.parametrize(
    "albedo, name",
    [((0.9, 0.1, 0.1), "red"), ((0.1, 0.8, 0.1), "green"), ((0.1, 0.1, 0.9), "blue"), ((0.9, 0.9, 0.1), "yellow"),
     ((1.0, 0.5, 0.0), "orange"), ((0.1, 0.9, 0.9), "cyan"), ((0.6, 0.1, 0.8), "purple"), ((1.0, 0.7, 0.8), "pink"),
     ((0.95, 0.95, 0.95), "white"), ((0.5, 0.5, 0.5), "grey"), ((0.5, 0.3, 0.1), "brown"),
     # the dataset's light tints (every channel >= 0.35) keep their hue's name
     ((1.0, 0.35, 0.35), "red"), ((0.35, 0.35, 1.0), "blue"), ((0.35, 1.0, 0.35), "green")],
)
def test_colour_names(albedo, name):
    assert C.colour_name(albedo) == name


def test_colour_word_in_captions_and_bad_albedo_is_an_error():
    spec = prim("octahedron", size=0.5)
    caps = many(spec, (0.9, 0.1, 0.1))
    assert said(caps, {"red"}) and not said(caps, {"blue", "green", "pink"})
    with pytest.raises(FlowSDFError):
        C.captions_for(spec, (1.5, 0.0, 0.0))
    with pytest.raises(FlowSDFError):
        C.captions_for(spec, (0.5, 0.5))


def test_size_words_follow_the_bounding_radius():
    assert C.size_word(prim("sphere", radius=0.3)) == "small"
    assert C.size_word(prim("sphere", radius=0.8)) == "large"
    assert C.size_word(prim("sphere", radius=0.55)) is None
    radii = [shapes.bounding_radius(s) for s in shapes.random_shapes(500, 0)]
    words = [C.size_word({"kind": "sphere", "params": {"radius": r}, "translation": [0, 0, 0]}) for r in radii]
    for w in ("small", "large"):
        assert 0.1 <= words.count(w) / len(words) <= 0.35


def test_difference_with_a_round_cutter_is_a_hole():
    box = prim("box", half=[0.4, 0.4, 0.4])
    spec = {"op": "difference", "a": box, "b": prim("sphere", translation=(0.4, 0.0, 0.0), radius=0.25)}
    d = C.describe(spec, GREY)
    assert (d.op, d.kind, d.other) == ("difference", "box", "sphere")
    caps = many(spec, GREY)
    assert all("hole" in C.words(c) for c in caps)
    # the cutter far outside the box removes nothing: no hole is claimed
    miss = {"op": "difference", "a": box, "b": prim("sphere", translation=(0.0, 0.8, 0.0), radius=0.15)}
    assert C.describe(miss, GREY).op is None
    assert not said(many(miss, GREY), {"hole", "notch"})


def test_difference_with_a_box_cutter_is_a_notch_and_union_joins():
    sphere = prim("sphere", radius=0.5)
    notch = {"op": "difference", "a": sphere, "b": prim("box", translation=(0.5, 0.0, 0.0), half=[0.2, 0.2, 0.2])}
    caps = many(notch, GREY)
    assert all("notch" in C.words(c) for c in caps) and said(caps, {"box"})
    union = {"op": "union", "a": sphere, "b": prim("cone", translation=(0.0, 0.55, 0.0), radius=0.25, half_height=0.3)}
    caps = many(union, GREY)
    assert all(set(C.words(c)) & {"joined", "fused", "attached"} for c in caps)
    assert all(set(C.words(c)) & C.FAMILY_WORDS["cone"] for c in caps)
    # a second part hidden inside the first is not mentioned
    hidden = {"op": "union", "a": sphere, "b": prim("sphere", translation=(0.1, 0.0, 0.0), radius=0.2)}
    assert C.describe(hidden, GREY).op is None


# ---------------------------------------------------------------------------------------------
# determinism and variety


def test_captions_are_deterministic_and_vary():
    spec = prim("cylinder", radius=0.15, half_height=0.45)
    albedo = (0.9, 0.1, 0.1)
    a = C.captions_for(spec, albedo, n=8, seed=3)
    assert a == C.captions_for(spec, albedo, n=8, seed=3)
    assert len(set(a)) == 8  # distinct within one call
    assert a != C.captions_for(spec, albedo, n=8, seed=4)
    firsts = {tuple(C.words(c)[:2]) for s in range(10) for c in C.captions_for(spec, albedo, 8, s)}
    assert len(firsts) >= 5  # several templates, not one sentence with synonyms


def test_split_captions_is_deterministic_and_checks_lengths():
    specs = shapes.random_shapes(6, 1)
    albedos = np.random.default_rng(0).uniform(0.35, 1, (6, 3))
    a, b = C.split_captions(specs, albedos, n=3, seed=5), C.split_captions(specs, albedos, n=3, seed=5)
    assert a == b and len(a.train) == 6 and all(len(c) == 3 for c in a.train)
    assert a.train != C.split_captions(specs, albedos, n=3, seed=6).train
    with pytest.raises(FlowSDFError):
        C.split_captions(specs, albedos[:5])
    with pytest.raises(FlowSDFError):
        C.captions_for(specs[0], albedos[0], split="test")


# ---------------------------------------------------------------------------------------------
# held-out sets


def test_violation_rule_on_hand_written_captions():
    assert [p for _, p in C.unseen_pair_violations(["a green torus"])] == [C.UnseenPair("green", "torus")]
    assert C.unseen_pair_violations(["a tall pink cylinder"])  # both pairs of the cylinder
    assert C.unseen_pair_violations(["a green sphere joined to a ring"])  # the ring anywhere counts
    assert C.unseen_pair_violations(["a flattened oval shape"])
    assert not C.unseen_pair_violations(["a green shape", "a torus", "a red torus", "a tall cone"])


def test_green_torus_is_never_called_so_in_training_but_both_words_are_taught():
    spec = prim("torus", major=0.45, minor=0.15)
    assert C.colour_name((0.3, 0.8, 0.3)) == "green"
    train = many(spec, (0.3, 0.8, 0.3), n=10, seeds=range(6))
    assert not C.unseen_pair_violations(train)
    assert said(train, {"green"}) and said(train, C.FAMILY_WORDS["torus"])  # "a green shape", "a torus"
    unseen = C.captions_for(spec, (0.3, 0.8, 0.3), n=5, seed=0, split="unseen")
    assert len(unseen) == 5 and all(C.unseen_pair_violations([c]) for c in unseen)
    assert C.captions_for(spec, (0.9, 0.1, 0.1), n=5, split="unseen") == []  # a red torus is no held-out pair


def test_unseen_pairs_never_in_training_over_500_shapes_and_all_in_evaluation():
    specs = shapes.random_shapes(500, 11)
    albedos = np.random.default_rng(11).uniform(0.35, 1.0, (500, 3))
    split = C.split_captions(specs, albedos, n=3, seed=0)
    train = [c for cs in split.train for c in cs]
    heldout = [c for cs in split.heldout_templates for c in cs]
    unseen = [c for cs in split.unseen for c in cs]
    assert C.unseen_pair_violations(train) == []
    assert C.unseen_pair_violations(heldout) == []
    assert all(C.unseen_pair_violations([c]) for c in unseen)
    assert {p for _, p in C.unseen_pair_violations(unseen)} == set(C.UNSEEN_PAIRS)
    assert not set(train) & set(heldout)  # the held-out phrasings never appear in training
    # unseen captions belong to shapes that really have the pair
    for spec, albedo, caps in zip(specs, albedos, split.unseen):
        if caps:
            d = C.describe(spec, albedo)
            assert any(p.family == d.kind and p.attribute in (d.colour, d.proportion) for p in C.UNSEEN_PAIRS)
