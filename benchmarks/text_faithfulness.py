"""Is text-to-3-D faithful to its prompt? Family, proportions and diversity of generated shapes.

No 3-D data in the loop: shapes are judged by their silhouettes and occupied volume
(flowsdf.metrics.faithfulness). For each guidance W a run's text model generates K samples
(seeds seed .. seed + K - 1, the same for every W) for three sets of prompts:

- heldout_templates: phrasings never used in training, each naming its shape's family;
- unseen: captions that say a held-out (attribute, family) pair (captions.UNSEEN_PAIRS);
- proportion: held-out-template captions of lone primitives that say a long-category word
  ("tall", "long", "slender" ...) or a flat-category word ("flat", "squat", "wide" ...), half each.

The prompts describe freshly drawn random shapes (shapes.random_shapes, 256 at a time, from seeds
drawn by a generator seeded with PROMPT_SEED + --seed; albedos drawn as the dataset draws them),
captioned by captions.captions_for — not the run's dataset shapes: a small dataset may hold no
shape with an unseen pair, and a caption of a new shape is as new to the model as one of a
held-out shape. The text model learnt from codes, not from these shapes; each prompt's source
shape only gives its label and the "source shapes" reference row (what a faithful model scores).

Measured per W:
- family accuracy per set: the family classifier's verdict on each sample against its prompt's
  family (the one captions.describe names); an empty sample counts as wrong. Also with box and
  rounded box merged (captions name both "box");
- proportion: for prompts saying long vs flat (any set, lone primitives only), the share of
  (long, flat) sample pairs whose elongation statistic is ordered right, pooled and within each
  family (where only the word differs);
- diversity of the K samples of one prompt: mean pairwise code distance over the mean code norm,
  and mean pairwise 1 - IoU of their renders; and the share of empty samples.
The generated shapes are in the run's frame ("world" or "view"), where their pose is random either
way: every measure is rotation-invariant or learnt from randomly rotated shapes.

The family classifier is trained on renders of random shapes (seed --classifier-seed, disjoint from
every dataset's) and cached beside --out (FILE.classifier.safetensors, its settings and held-out
accuracy in the file's JSON header); a cache with other settings is retrained. At the defaults it
takes ~3 min on one CPU thread (held-out accuracy 0.88, 0.92 with the boxes merged). Each W then
costs ~0.6 s per sample's renders and ~0.25 s per elongation on one CPU thread (~3 min at the
defaults); a GPU makes both small.

    python benchmarks/text_faithfulness.py --run runs/text --out docs/results/text_faithfulness.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.checkpoint import write_json
from flowsdf.data import shapes
from flowsdf.data.captions import (
    CATEGORY_WORDS,
    FAMILY_WORDS,
    captions_for,
    describe,
    words,
)
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.fields import code_field
from flowsdf.loading import load_model
from flowsdf.metrics.faithfulness import (
    FAMILIES,
    ClassifierConfig,
    FamilyClassifier,
    FamilyViews,
    accuracy_by_family,
    elongation_statistic,
    family_label,
    family_renders,
    pair_order_rate,
    specs_field,
    train_family_classifier,
)
from flowsdf.metrics.samples import pairwise_distance
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF
from flowsdf.provenance import provenance

PROMPT_SEED = 515_151  # the prompts' shapes: far from any dataset's seed and the classifier's
MAX_POOL = 50_000  # random shapes drawn at most while looking for prompts
SETS = ("heldout_templates", "unseen", "proportion")
FAMILY_SETS = ("heldout_templates", "unseen")  # the sets whose family accuracy is reported


@dataclasses.dataclass
class Prompt:
    caption: str
    family: str  # the family of the described shape's main part (the label)
    proportion: str | None  # "long" / "flat" when the caption says it of a lone primitive, else None
    spec: shapes.Spec


def names_family(caption: str, family: str) -> bool:
    """Whether the caption names the family (a rounded box is named by "box")."""
    group = "box" if family == "rounded_box" else family
    return bool(set(words(caption)) & FAMILY_WORDS[group])


def said_proportion(caption: str, lone: bool) -> str | None:
    if not lone:  # a joined or cut part changes the whole shape's proportions
        return None
    w = set(words(caption))
    return "long" if w & CATEGORY_WORDS["long"] else "flat" if w & CATEGORY_WORDS["flat"] else None


def build_prompts(n: int, seed: int) -> dict[str, list[Prompt]]:
    """n prompts per set (the proportion set: n // 2 long and n - n // 2 flat), deterministic from seed."""
    rng = np.random.default_rng(PROMPT_SEED + seed)
    want = {"heldout_templates": n, "unseen": n, "long": n // 2, "flat": n - n // 2}
    found: dict[str, list[Prompt]] = {k: [] for k in want}
    drawn = 0
    while any(len(found[k]) < want[k] for k in want):
        if drawn >= MAX_POOL:
            short = {k: len(v) for k, v in found.items() if len(v) < want[k]}
            raise FlowSDFError(f"only {short} prompts in {MAX_POOL} random shapes; ask for fewer with --prompts-per-split")
        specs = shapes.random_shapes(256, int(rng.integers(2**31)))
        albedo = rng.uniform(0.35, 1.0, size=(len(specs), 3))  # as the dataset draws albedo
        for i, (spec, a) in enumerate(zip(specs, albedo)):
            d = describe(spec, a)
            cap_seed = drawn + i
            held = captions_for(spec, a, 1, cap_seed, "heldout_templates")[0]
            if names_family(held, d.kind):
                prop = said_proportion(held, d.op is None)
                # each prompt in one set only: the proportion measure pools every set
                key = next((k for k in ("heldout_templates", prop) if k is not None and len(found[k]) < want[k]), None)
                if key is not None:
                    found[key].append(Prompt(held, d.kind, prop, spec))
            unseen = captions_for(spec, a, 1, cap_seed, "unseen")
            if unseen and len(found["unseen"]) < want["unseen"]:
                found["unseen"].append(Prompt(unseen[0], d.kind, said_proportion(unseen[0], d.op is None), spec))
        drawn += len(specs)
    return {"heldout_templates": found["heldout_templates"], "unseen": found["unseen"],
            "proportion": found["long"] + found["flat"]}


def family_classifier(cfg: ClassifierConfig, views: FamilyViews, cache: Path, progress: bool
                      ) -> tuple[FamilyClassifier, dict]:
    """The classifier cached in `cache` when its settings match, else a freshly trained one (then cached)."""
    settings = {"classifier": dataclasses.asdict(cfg), "views": dataclasses.asdict(views), "families": list(FAMILIES)}
    if cache.is_file():
        meta = checkpoint.read_header(cache)["meta"]
        if meta.get("settings") == settings:
            model = FamilyClassifier(views.count, cfg.width)
            checkpoint.load(cache, {"classifier": model})
            return model.eval(), {**meta["report"], "cached": str(cache)}
        print(f"{cache} was trained with other settings: training a new one")
    model, report = train_family_classifier(cfg, views, progress=progress)
    checkpoint.save(cache, {"classifier": model}, meta={"settings": settings, "report": report})
    return model, {**report, "cached": None}


def proportion_rate(values: list[float | None], prompts: list[Prompt]) -> dict:
    """pair_order_rate of long-prompt values over flat-prompt values (one value per shape), over all
    prompts and within each family that has both (families differ in shape, so the pooled rate could
    follow from the family alone; within a family only the proportion word differs). An empty shape
    (value None) has no proportions: it is left out of the pairs and counted under "empty"."""
    def rate(family: str | None) -> tuple[float | None, int, int]:
        long, flat = ([v for v, p in zip(values, prompts) if p.proportion == word and v is not None
                       and family in (None, p.family)] for word in ("long", "flat"))
        return (pair_order_rate(long, flat) if long and flat else None), len(long), len(flat)

    overall, n_long, n_flat = rate(None)
    per_family = {f: r for f in FAMILIES if (r := rate(f)[0]) is not None}
    empty = sum(v is None for v, p in zip(values, prompts) if p.proportion)
    return {"long_above_flat": overall, "long_above_flat_per_family": per_family, "long": n_long, "flat": n_flat,
            "empty": empty}


def gt_reference(prompts: dict[str, list[Prompt]], classifier: FamilyClassifier, views: FamilyViews) -> dict:
    """The same measures on each prompt's source shape: what a perfectly faithful model would score."""
    out = {}
    for name in FAMILY_SETS:
        specs = [p.spec for p in prompts[name]]
        labels = torch.tensor([FAMILIES.index(p.family) for p in prompts[name]])
        score = accuracy_by_family(classifier.predict(family_renders(specs_field(specs), len(specs), views)), labels)
        out[f"family_accuracy_{name}"] = score["accuracy"]
        out[f"family_accuracy_{name}_merged_boxes"] = score["merged_boxes"]
    every = [p for name in SETS for p in prompts[name]]
    values = [elongation_statistic(lambda x, s=p.spec: shapes.sdf(s, x)) for p in every]
    out["proportion"] = proportion_rate(values, every)
    return out


@torch.no_grad()
def stage1_reference(run: Path, classifier: FamilyClassifier, views: FamilyViews, n: int, progress: bool) -> dict:
    """What the run's own shapes can show: the family accuracy of the Stage-1 reconstructions of its
    first n training shapes (the encoder's code of each shape's input picture, decoded). Text
    generation samples the same code space, so it cannot be more faithful than this, however good
    the text model is (the "source shapes" row measures the classifier, not the decoder)."""
    stage1 = load_model(run, "cnn", "cpu")  # an encoder, or a code table (it answers its own training pictures)
    split = runs.run_data(stage1.cfg, run, None, progress=False).train
    n = min(n, len(split))
    codes = stage1.encoder(split.input.images[:n, 0])  # (n, *latent)
    renders = family_renders(stage1.decoder.field(codes), n, views, progress=progress)  # (n, M, S, S)
    pred = torch.where(renders.flatten(1).amax(1) == 0, -1, classifier.predict(renders))  # (n,)
    labels = torch.tensor([FAMILIES.index(family_label(spec)) for spec in split.shapes[:n]])
    score = accuracy_by_family(pred, labels)
    return {"shapes": n, "family_accuracy": score["accuracy"], "family_accuracy_merged_boxes": score["merged_boxes"]}


def diversity(codes: torch.Tensor, renders: torch.Tensor) -> dict:
    """How the K samples of one prompt differ, averaged over prompts: codes (N, K, *latent) -> their mean
    pairwise distance over their mean norm; renders (N, K, M, S, S) -> mean pairwise 1 - IoU of the
    M renders taken together (two empty shapes agree: 0)."""
    N, K = codes.shape[:2]
    if K < 2:
        return {"code_spread": None, "silhouette_distance": None}
    pair = ~torch.eye(K, dtype=torch.bool)  # off-diagonal (i, j)
    flat = codes.reshape(N, K, -1).float().cpu()  # (N, K, D)
    spread = pairwise_distance(flat) / flat.norm(dim=-1).mean(1).clamp(min=1e-12)  # (N,)
    masks = renders.reshape(N, K, -1).bool()  # (N, K, M*S*S)
    a = masks[:, :, None].expand(-1, K, K, -1)[:, pair]  # (N, K*(K-1), M*S*S) sample i of each pair
    b = masks[:, None].expand(-1, K, K, -1)[:, pair]  # sample j
    iou = silhouette_iou(a.flatten(0, 1), b.flatten(0, 1))  # (N*K*(K-1),)
    return {"code_spread": spread.mean().item(), "silhouette_distance": (1.0 - iou).mean().item()}


@torch.no_grad()
def measure(pipe: FlowSDF, prompts: dict[str, list[Prompt]], classifier: FamilyClassifier, views: FamilyViews,
            w: float, args: argparse.Namespace, progress: bool) -> dict:
    """One row: K samples of every prompt at guidance w, scored."""
    t0 = time.perf_counter()
    K = args.samples
    every = [p for name in SETS for p in prompts[name]]  # the family sets first (SETS' order)
    codes = torch.cat([pipe.generate([p.caption for p in every[s : s + 32]], samples=K, seed=args.seed, steps=args.steps,
                                     guidance=w).codes for s in range(0, len(every), 32)])  # (N, K, *latent)
    # Renders only for the family sets: the proportion set is judged by volume alone.
    n_fam = sum(len(prompts[name]) for name in FAMILY_SETS)
    fam = codes[:n_fam].flatten(0, 1)  # (F*K, *latent)
    renders = family_renders(pipe.decoder.field(fam), fam.shape[0], views, device=pipe.device,
                             progress=progress)  # (F*K, M, S, S)
    empty = renders.flatten(1).amax(1) == 0  # (F*K,)
    # A blank render shows no family: an empty sample is wrong, whatever the classifier says of it.
    pred = torch.where(empty, -1, classifier.predict(renders)).view(n_fam, K)  # (F, K)
    row: dict = {"guidance": w}
    start = 0
    for name in FAMILY_SETS:
        n = len(prompts[name])
        labels = torch.tensor([FAMILIES.index(p.family) for p in prompts[name]])  # (n,)
        score = accuracy_by_family(pred[start : start + n].flatten(), labels.repeat_interleave(K))
        row[f"family_accuracy_{name}"] = score["accuracy"]
        row[f"family_accuracy_{name}_merged_boxes"] = score["merged_boxes"]
        row[f"family_accuracy_{name}_per_family"] = score["per_family"]
        start += n
    per_sample = [p for p in every for _ in range(K)]
    values = [elongation_statistic(code_field(pipe.decoder, c)) if p.proportion else None
              for p, c in tqdm(zip(per_sample, codes.flatten(0, 1)), total=len(per_sample), desc="elongation",
                               leave=False, disable=not progress)]
    row["proportion"] = proportion_rate(values, per_sample)
    row["empty_share"] = empty.float().mean().item()  # of the family sets' samples
    row.update(diversity(codes[:n_fam], renders.view(n_fam, K, *renders.shape[1:])))
    row["seconds"] = time.perf_counter() - t0
    return row


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], gt: dict) -> str:
    header = ("| W | family acc. (held-out templates) | family acc. (unseen) | long > flat pairs | code spread | "
              "silhouette 1 - IoU | empty | s |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| source shapes | {fmt(gt['family_accuracy_heldout_templates'])} | {fmt(gt['family_accuracy_unseen'])} | "
                 f"{fmt(gt['proportion']['long_above_flat'])} | | | | |")
    if "stage1_reconstructions" in gt:
        r = gt["stage1_reconstructions"]
        lines.append(f"| Stage-1 reconstructions of {r['shapes']} training shapes (all phrasings) | "
                     f"{fmt(r['family_accuracy'])} | | | | | | |")
    for r in rows:
        lines.append(f"| {r['guidance']:g} | {fmt(r['family_accuracy_heldout_templates'])} | "
                     f"{fmt(r['family_accuracy_unseen'])} | {fmt(r['proportion']['long_above_flat'])} | "
                     f"{fmt(r['code_spread'])} | {fmt(r['silhouette_distance'])} | {fmt(r['empty_share'])} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder with a trained text model")
    p.add_argument("--out", type=Path, required=True, help="the result, JSON (the classifier is cached beside it)")
    p.add_argument("--guidance", default="1,2,3,5,7", help="comma-separated guidance weights W")
    p.add_argument("--samples", type=int, default=4, help="samples K per prompt")
    p.add_argument("--prompts-per-split", type=int, default=24, help="prompts per set (heldout_templates, unseen, proportion)")
    p.add_argument("--seed", type=int, default=0, help="sample seeds seed .. seed + K - 1; also picks the prompts")
    p.add_argument("--steps", type=int, help="Euler steps (default: the run's)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--classifier-shapes", type=int, default=ClassifierConfig.n_shapes,
                   help="random shapes rendered for the family classifier (1/8 held out for its accuracy)")
    p.add_argument("--classifier-epochs", type=int, default=ClassifierConfig.epochs)
    p.add_argument("--classifier-seed", type=int, default=ClassifierConfig.seed)
    p.add_argument("--stage1-reference", type=int, default=200, metavar="N",
                   help="training shapes whose Stage-1 reconstructions give the code space's ceiling (0 = skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples < 1 or args.prompts_per_split < 2:
        raise SystemExit("error: --samples must be >= 1 and --prompts-per-split >= 2")
    weights = [float(x) for x in args.guidance.split(",") if x.strip()]  # "" = the reference rows only
    progress = not args.quiet
    views = FamilyViews()
    t0 = time.perf_counter()
    try:
        # The reference rows alone (no --guidance) need no text model: a Stage-1 run is enough.
        pipe = FlowSDF.from_run(args.run, "text", device=args.device) if weights else None
        run_cfg, device = (pipe.cfg, pipe.device) if pipe else (runs.read_config(args.run), pick_device(args.device))
        cfg = ClassifierConfig(n_shapes=args.classifier_shapes, seed=args.classifier_seed, epochs=args.classifier_epochs)
        cache = args.out.with_name(args.out.stem + ".classifier.safetensors")
        classifier, report = family_classifier(cfg, views, cache, progress)
        print(f"family classifier: held-out accuracy {report['heldout_accuracy']:.3f} on {report['heldout_shapes']} "
              f"random shapes ({len(FAMILIES)} families)")
        prompts = build_prompts(args.prompts_per_split, args.seed)
        gt = gt_reference(prompts, classifier, views)
        if args.stage1_reference:
            gt["stage1_reconstructions"] = stage1_reference(args.run, classifier, views, args.stage1_reference, progress)
        rows = []
        for w in tqdm(weights, desc="guidance", leave=False, disable=not progress):
            rows.append(measure(pipe, prompts, classifier, views, w, args, progress))
    except FlowSDFError as e:
        raise SystemExit(f"error: {e}") from e
    result = {
        "run": str(args.run), "frame": run_cfg.frame, "samples": args.samples, "seed": args.seed,
        "steps": args.steps or run_cfg.flow.steps, "views": dataclasses.asdict(views), "classifier": report,
        "prompts": {name: [{"caption": q.caption, "family": q.family, "proportion": q.proportion} for q in ps]
                    for name, ps in prompts.items()},
        "source_shapes": gt, "rows": rows,
        "provenance": provenance(device, seconds={"total": time.perf_counter() - t0}),
    }
    write_json(args.out, result)
    print(table(rows, gt))


if __name__ == "__main__":
    main()
