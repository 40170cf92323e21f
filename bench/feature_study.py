"""The feature study: which features, bank, border handling and image score find the defects.

Two stages, so that a sweep costs seconds, not a refit:
1. ``cache``: one forward pass per (set, backbone, geometry, size) stores every stage output of
   the frozen trunk (timm's block groups, not only the `features_only` stage ends) for the train
   and test images, fp16, under --cache.
2. ``sweep``: each variant (layer group, neighbourhood, bank size, per-level banks, image score)
   is computed from the cache: knn distances, each fit image scored leave-one-out for the
   calibrated scores, maps smoothed and brought back to image resolution, then image AUROC /
   pixel AUROC / AUPRO / pointing.

    python bench/feature_study.py --sets mvtec_bottle --variants base,pad
    python bench/feature_study.py --json study.json           # every variant on every set
    python bench/feature_study.py --from-json study.json      # the table again

A finished (set, variant) pair is written to --json at once; a rerun skips the pairs there.
Pixel metrics are computed with maps and masks at most --eval-side pixels on their longer side
(nearest for masks): the sweep ranks variants; `vqc evaluate` gives the full-resolution numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = ("mvtec_bottle", "mpdd_metal_plate", "magnetic_tile_full", "mvtec3d_tire", "kolektorsdd")


@dataclass(frozen=True)
class Variant:
    backbone: str = "efficientnet_lite0"
    geometry: str = "resize"
    size: int = 224
    pad: int = 0  # reflect-pad the input by this many pixels, crop the features back (border handling)
    groups: tuple = ((2, 4),)  # banks: each a group of stage indexes (timm block groups); several = fused
    pool: int = 3
    head: str = "knn"  # knn | simplenet (adaptor + discriminator against Gaussian-noised features)
    noise: float = 0.5  # simplenet: noise std as a share of the adapted features' per-channel std
    equalise: bool = False  # scale each level so its patches' mean squared norm is 1 (each level weighs the same)
    bank: int = 4096  # coreset rows per bank (0: every patch)
    coreset: str = "exact"  # exact: greedy over every patch, 128-d; all32: the same, 32-d (the knn head's);
    # fast: over a random 10 x bank, 32-d
    score: str = "max"  # max | top10 | zmax (per-position z of leave-one-out maps, the score only)
    calib: str = "none"  # none | sub | z: the map itself less the good images' per-position mean (/ std)
    sigma: float = 4.0


VARIANTS = {
    "base": Variant(),  # today's default: lite0 stages 2,4 (features_only 2,3), 224 squash, bank 4096
    "bank16k": Variant(bank=16384, coreset="fast"),
    "bank-fast": Variant(coreset="fast"),
    "bank-all": Variant(bank=0),
    "bank-all32": Variant(coreset="all32"),
    "bank16k-all32": Variant(bank=16384, coreset="all32"),
    "pad": Variant(pad=16),
    "s34": Variant(groups=((3, 4),)),
    "s2345": Variant(groups=((2, 3, 4, 5),)),
    "s45": Variant(groups=((4, 5),)),
    "s46": Variant(groups=((4, 6),)),
    "fuse24+46": Variant(groups=((2, 4), (4, 6))),
    "fuse24+45": Variant(groups=((2, 4), (4, 5))),
    "top10": Variant(score="top10"),
    "zmax": Variant(score="zmax"),
    "320": Variant(size=320),
    "lb448": Variant(geometry="letterbox", size=448),
    "lite1-240": Variant(backbone="efficientnet_lite1", size=240),
    "lite2-260": Variant(backbone="efficientnet_lite2", size=260),
    "s124": Variant(groups=((1, 2, 4),)),
    "pad-sub": Variant(pad=16, calib="sub"),
    "pad-z": Variant(pad=16, calib="z"),
    "sub": Variant(calib="sub"),
    "native320-pad": Variant(geometry="native", size=320, pad=16),
    "pad32": Variant(pad=16, coreset="all32"),
    "s46-32": Variant(groups=((4, 6),), coreset="all32"),
    "eq24-32": Variant(equalise=True, coreset="all32"),
    "eq46-32": Variant(groups=((4, 6),), equalise=True, coreset="all32"),
    "eq246-32": Variant(groups=((2, 4, 6),), equalise=True, coreset="all32"),
    "s46-edge-sub": Variant(groups=((4, 6),), coreset="all32", calib="edge-sub"),
    "s46-edge-div": Variant(groups=((4, 6),), coreset="all32", calib="edge-div"),
    "s24-edge-div": Variant(coreset="all32", calib="edge-div"),
    "320-s46-32": Variant(size=320, groups=((4, 6),), coreset="all32"),
    "lite2-260-s46-32": Variant(backbone="efficientnet_lite2", size=260, groups=((4, 6),), coreset="all32"),
    "lite1-240-s46-32": Variant(backbone="efficientnet_lite1", size=240, groups=((4, 6),), coreset="all32"),
    "simplenet24": Variant(head="simplenet"),
    "simplenet46": Variant(head="simplenet", groups=((4, 6),)),
    "simplenet46-n01": Variant(head="simplenet", groups=((4, 6),), noise=0.1),
    "native224-fuse-pad-16k": Variant(geometry="native", size=224, pad=16, groups=((2, 4), (4, 6)), bank=16384,
                                      coreset="all32"),
    "keep-s46-32": Variant(geometry="keep", groups=((4, 6),), coreset="all32"),
    "keep-32": Variant(geometry="keep", coreset="all32"),
    "keep-fuse-32": Variant(geometry="keep", groups=((2, 4), (4, 6)), coreset="all32"),
    "lb448-32": Variant(geometry="letterbox", size=448, coreset="all32"),
    "320-32": Variant(size=320, coreset="all32"),
    "lb320-32": Variant(geometry="letterbox", size=320, coreset="all32"),
    "keep-s46-16k": Variant(geometry="keep", groups=((4, 6),), bank=16384, coreset="all32"),
    "s46-top10": Variant(groups=((4, 6),), coreset="all32", score="top10"),
    "s46-sigma2": Variant(groups=((4, 6),), coreset="all32", sigma=2.0),
    "s46-all": Variant(groups=((4, 6),), bank=0),
    "s46-16k": Variant(groups=((4, 6),), bank=16384, coreset="all32"),
    "s24-16k": Variant(bank=16384, coreset="all32"),
    "fuse24+46-32": Variant(groups=((2, 4), (4, 6)), coreset="all32"),
    "native224-32": Variant(geometry="native", size=224, coreset="all32"),
    "native224-s46-pad32": Variant(geometry="native", size=224, pad=16, groups=((4, 6),), coreset="all32"),
    "native224-fuse-pad32": Variant(geometry="native", size=224, pad=16, groups=((2, 4), (4, 6)), coreset="all32"),
    "native320-pad32": Variant(geometry="native", size=320, pad=16, coreset="all32"),
    "native224-pad32": Variant(geometry="native", size=224, pad=16, coreset="all32"),
    "lb448-pad32": Variant(geometry="letterbox", size=448, pad=16, coreset="all32"),
    "s46-pad32": Variant(groups=((4, 6),), pad=16, coreset="all32"),
    "fuse24+46-pad32": Variant(groups=((2, 4), (4, 6)), pad=16, coreset="all32"),
    "native224-pad-sub": Variant(geometry="native", size=224, pad=16, calib="sub"),
    "lb448-pad": Variant(geometry="letterbox", size=448, pad=16),
    "s46-pad": Variant(groups=((4, 6),), pad=16),
    "fuse24+46-pad-sub": Variant(groups=((2, 4), (4, 6)), pad=16, calib="sub"),
    "sigma2": Variant(sigma=2.0),
    "native224": Variant(geometry="native", size=224),
    "native224-s46": Variant(geometry="native", size=224, groups=((4, 6),)),
    "lb448-s46": Variant(geometry="letterbox", size=448, groups=((4, 6),)),
    "320-s46": Variant(size=320, groups=((4, 6),)),
    "320-fuse24+46": Variant(size=320, groups=((2, 4), (4, 6))),
}


# ---------------------------------------------------------------- stage 1: the cache

def stage_trunk(backbone: str):
    """The full timm model with vqc's offline weights, run block group by block group."""
    from vqc.training.backbones import get_spec, load_full_model, normalisation
    full, _ = load_full_model(backbone)
    full.eval().requires_grad_(False)
    mean, std = normalisation(get_spec(backbone))
    mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def run(batch_uint8: torch.Tensor, pad: int) -> list[torch.Tensor]:
        x = (batch_uint8.float() - mean) / std
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = full.bn1(full.conv_stem(x))
        out = []
        for stage in full.blocks:
            x = stage(x)
            out.append(x)
        if pad:  # crop each level back to the unpadded image's grid
            out = [level[..., round(pad * level.shape[-2] / (batch_uint8.shape[-2] + 2 * pad)):
                          level.shape[-2] - round(pad * level.shape[-2] / (batch_uint8.shape[-2] + 2 * pad)),
                          round(pad * level.shape[-1] / (batch_uint8.shape[-1] + 2 * pad)):
                          level.shape[-1] - round(pad * level.shape[-1] / (batch_uint8.shape[-1] + 2 * pad))]
                   for level in out]
        return out
    return run


def cache_key(name: str, v: Variant) -> str:
    return f"{Path(name).name}-{v.backbone}-{v.geometry}{v.size}-pad{v.pad}-v2"


def keep_scale(image: np.ndarray):
    """Geometry "keep": the image at its own pixel scale, each side rounded to a multiple of 32
    (parts imaged by one camera keep one texture scale, however large the crop)."""
    from vqc.geometry import Plan, resize
    h, w = image.shape[:2]
    nh, nw = (max(32, round(side / 32) * 32) for side in (h, w))
    return Plan([resize(image, nh, nw)], [(nh, nw)], [(0, 0)], (nh, nw), (h, w))


def build_cache(root: Path, v: Variant, path: Path) -> dict:
    """Per split: each image's stage outputs (a list of [C, h, w] fp16, stage 0 left out), its
    plan's (content, original) sizes, and its sample. Images of one input shape share a batch."""
    from vqc.data import decode_image, labelled_samples, read_split
    from vqc.geometry import Geometry
    planner = keep_scale if v.geometry == "keep" else Geometry(v.geometry, v.size).plan
    run = stage_trunk(v.backbone)
    out = {}
    for split, samples in (("train", read_split(root, "train")), ("test", labelled_samples(root))):
        plans = [planner(decode_image(s.path)) for s in samples]
        levels: list = [None] * len(plans)
        by_shape: dict = {}
        for i, plan in enumerate(plans):
            by_shape.setdefault(plan.inputs[0].shape, []).append(i)
        for indexes in by_shape.values():
            for start in range(0, len(indexes), 16):
                part = indexes[start:start + 16]
                batch = torch.from_numpy(np.stack([plans[i].inputs[0] for i in part]).transpose(0, 3, 1, 2))
                with torch.inference_mode():
                    got = [level.half() for level in run(batch, v.pad)[1:]]  # stage 0 (stride 2) is never used
                for j, i in enumerate(part):
                    levels[i] = [level[j].clone() for level in got]
        out[split] = {"levels": levels, "plans": [(p.content[0], p.original) for p in plans],
                      "samples": [(str(s.path), s.label, s.defect, str(s.mask) if s.mask else None) for s in samples]}
    torch.save(out, path)
    return out


def cached(name: str, v: Variant, folder: Path) -> dict:
    path = folder / f"{cache_key(name, v)}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    folder.mkdir(parents=True, exist_ok=True)
    return build_cache(SHARED / name, v, path)


# ---------------------------------------------------------------- stage 2: a variant from the cache

def level_scales(levels: list, group: tuple) -> list[float]:
    """1 / RMS norm of each level's patches over the fit images: after it every level weighs the
    same in a distance, whatever its channel count (PatchCore gets this by pooling every level to
    the same dimension)."""
    return [float(torch.stack([image[s - 1].float().pow(2).sum(0).mean() for image in levels]).mean().rsqrt())
            for s in group]


def group_features(levels: list, group: tuple, pool: int, scales: list[float] | None = None) -> list[torch.Tensor]:
    """Per image [C, h, w] at the finest level of the group (stage indexes: timm's block groups,
    1-based since the cache drops stage 0), each level averaged over pool x pool; images of one
    shape are computed together."""
    from vqc.training.heads.patches import patch_features
    out: list = [None] * len(levels)
    by_shape: dict = {}
    for i, image in enumerate(levels):
        by_shape.setdefault(tuple(image[0].shape), []).append(i)
    for indexes in by_shape.values():
        for start in range(0, len(indexes), 64):
            part = indexes[start:start + 64]
            got = patch_features([torch.stack([levels[i][s - 1] for i in part]).float() * (scales[k] if scales else 1)
                                  for k, s in enumerate(group)], pool)
            for j, i in enumerate(part):
                out[i] = got[j]
    return out


def coreset(patches: torch.Tensor, n: int, how: str, seed: int = 0, dim: int = 32) -> torch.Tensor:
    """Greedy k-center rows. exact: every patch, 128-d projection; all32: every patch, 32-d (the
    knn head's); fast: a random share of 10 n patches, 32-d (a bounded-time stand-in)."""
    from vqc.training.heads.knn import greedy_coreset
    if not n or n >= len(patches):
        return torch.arange(len(patches))
    if how == "exact":
        return greedy_coreset(patches, n, seed, dim=128)
    if how == "all32":
        return greedy_coreset(patches, n, seed, dim=32)
    pre = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:10 * n]
    return pre[greedy_coreset(patches[pre], n, seed, dim=dim)]


def nearest(queries: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor | None = None,
            query_owner: torch.Tensor | None = None, block: int = 8192) -> torch.Tensor:
    """Distance of each query row to its nearest bank row; with exclude (bank row owner) and
    query_owner, rows of the query's own image are skipped (leave-one-out)."""
    q2 = (queries * queries).sum(1, keepdim=True)
    best = torch.full((len(queries),), float("inf"))
    for start in range(0, len(bank), block):
        part = bank[start:start + block]
        d = q2 - 2 * queries @ part.T + (part * part).sum(1)
        if exclude is not None:
            d[query_owner[:, None] == exclude[None, start:start + block]] = float("inf")
        best = torch.minimum(best, d.amin(1))
    return best.clamp_min(0).sqrt()


def patch_maps(features: list[torch.Tensor], bank: torch.Tensor, owners=None, batch: int = 32) -> list[torch.Tensor]:
    """Per image [1, h, w] nearest-neighbour distances (leave-one-out where owners are given)."""
    out = []
    for start in range(0, len(features), batch):
        part = features[start:start + batch]
        q = torch.cat([f.flatten(1).T for f in part])
        if owners is None:
            d = nearest(q, bank)
        else:
            qo = torch.cat([torch.full((f[0].numel(),), start + j) for j, f in enumerate(part)])
            d = nearest(q, bank, owners, qo)
        at = 0
        for f in part:
            n = f[0].numel()
            out.append(d[at:at + n].view(1, *f.shape[-2:]))
            at += n
    return out


def group_maps(cache: dict, group: tuple, v: Variant) -> tuple[list, list]:
    """(test patch maps, leave-one-out train patch maps) for one bank."""
    scales = level_scales(cache["train"]["levels"], group) if v.equalise else None
    train = group_features(cache["train"]["levels"], group, v.pool, scales)
    flat = torch.cat([f.flatten(1).T for f in train])
    owner = torch.cat([torch.full((f[0].numel(),), i) for i, f in enumerate(train)])
    rows = coreset(flat, v.bank, v.coreset)
    bank, bank_owner = flat[rows].contiguous(), owner[rows]
    test = group_features(cache["test"]["levels"], group, v.pool, scales)
    return patch_maps(test, bank), patch_maps(train, bank, bank_owner)


def simplenet_maps(train: list, test: list, noise: float, epochs: int = 8, seed: int = 0) -> tuple[list, list]:
    """SimpleNet on frozen patch features: a linear adaptor and an MLP discriminator trained to
    tell the good patches from the same patches with Gaussian noise added (its std a share of
    each channel's std, so the scale follows the backbone). Score: the discriminator's logit,
    negated (higher = more anomalous)."""
    from torch import nn
    torch.manual_seed(seed)
    flat = torch.cat([f.flatten(1).T for f in train])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    c = flat.shape[1]
    adaptor = nn.Linear(c, c)
    with torch.no_grad():
        adaptor.weight.copy_(torch.eye(c)), adaptor.bias.zero_()
    disc = nn.Sequential(nn.Linear(c, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1))
    opt = torch.optim.Adam([{"params": adaptor.parameters(), "lr": 1e-4},
                            {"params": disc.parameters(), "lr": 2e-4, "weight_decay": 1e-5}])
    z = (flat - mean) / std
    for _ in range(epochs):
        for idx in torch.randperm(len(z)).split(2048):
            good = adaptor(z[idx])
            fake = good + noise * torch.randn_like(good)
            out = disc(torch.cat([good, fake]))
            loss = (torch.clamp(0.5 - out[:len(idx)], min=0) + torch.clamp(0.5 + out[len(idx):], min=0)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    disc.eval()

    def score(features: list) -> list:
        with torch.no_grad():
            return [-disc(adaptor((f.flatten(1).T - mean) / std)).view(1, *f.shape[-2:]) for f in features]
    return score(test), score(train)


def stored_group_maps(cache: dict, group: tuple, v: Variant, stem: Path | None) -> tuple[list, list]:
    """group_maps, kept on disk beside the cache: variants that differ only in what comes after
    the distances (smoothing, calibration, image score) share one bank and one search."""
    if v.head == "simplenet":
        return simplenet_maps(group_features(cache["train"]["levels"], group, v.pool),
                              group_features(cache["test"]["levels"], group, v.pool), v.noise)
    if stem is None:
        return group_maps(cache, group, v)
    path = stem.with_name(f"{stem.name}-maps-g{''.join(map(str, group))}-p{v.pool}-b{v.bank}-{v.coreset}"
                          f"{'-eq' if v.equalise else ''}.pt")
    if path.exists():
        return torch.load(path)
    maps = group_maps(cache, group, v)
    torch.save(maps, path)
    return maps


def fused(cache: dict, v: Variant, stem: Path | None = None) -> tuple[list, list]:
    """Each bank's maps divided by its leave-one-out scale (the 99th percentile of the good
    images' patch distances), on each image's finest grid, summed over banks."""
    tests, trains = None, None
    for group in v.groups:
        test, train = stored_group_maps(cache, group, v, stem)
        if len(v.groups) > 1:
            sample = torch.cat([t.flatten() for t in train])
            scale = torch.quantile(sample[torch.randperm(len(sample))[:1_000_000]].float(), 0.99)
            test, train = [t / scale for t in test], [t / scale for t in train]
        if tests is None:
            tests, trains = test, train
            continue
        up = lambda a, b: a + (b if b.shape == a.shape else
                               F.interpolate(b[None], size=a.shape[-2:], mode="bilinear", align_corners=False)[0])
        tests = [up(a, b) for a, b in zip(tests, test)]
        trains = [up(a, b) for a, b in zip(trains, train)]
    return tests, trains


def canvases(patch: list, levels: list, plans: list, sigma: float) -> list[np.ndarray]:
    """Smoothed maps at network resolution (stage 1 is at stride 4), cropped to each plan's
    content (letterbox)."""
    from vqc.training.detector import GaussianBlur
    blur = GaussianBlur(sigma)
    out = []
    for m, image, (content, _) in zip(patch, levels, plans):
        side = (image[0].shape[-2] * 4, image[0].shape[-1] * 4)
        out.append(blur.upsample(m[None].float(), side)[0, 0].numpy()[:content[0], :content[1]])
    return out


def resize_map(m: np.ndarray, shape: tuple) -> np.ndarray:
    return F.interpolate(torch.from_numpy(m)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def edge_distance(shape: tuple) -> np.ndarray:
    """Each position's distance in pixels to the nearest image edge."""
    y = np.minimum(np.arange(shape[0]), shape[0] - 1 - np.arange(shape[0]))
    x = np.minimum(np.arange(shape[1]), shape[1] - 1 - np.arange(shape[1]))
    return np.minimum(y[:, None], x[None, :])


def edge_calibrated(test: list, train: list, how: str, bins: int = 64) -> list[np.ndarray]:
    """Each map less (or over) the good images' leave-one-out mean at its distance from the
    nearest edge: the border's inflation is taken out wherever the part sits."""
    total, count = np.zeros(bins), np.zeros(bins)
    for c in train:
        d = np.minimum(edge_distance(c.shape), bins - 1)
        total += np.bincount(d.ravel(), c.ravel(), bins)
        count += np.bincount(d.ravel(), None, bins)
    profile = total / np.maximum(count, 1)
    profile[count == 0] = profile[count > 0][-1]
    out = []
    for c in test:
        p = profile[np.minimum(edge_distance(c.shape), bins - 1)]
        out.append(c - p if how == "edge-sub" else c / p)
    return out


def calibrated(test: list, train: list, how: str) -> list[np.ndarray]:
    """Each map less the good images' leave-one-out mean at its position (and over their std):
    positions that are always high on good parts (borders, busy regions) stop leading."""
    shape = max((c.shape for c in train), key=lambda s: s[0] * s[1])
    stack = np.stack([c if c.shape == shape else resize_map(c, shape) for c in train])
    mu, sd = stack.mean(0), stack.std(0)
    sd = np.maximum(sd, 0.1 * sd.mean())
    out = []
    for c in test:
        m, s = (mu, sd) if c.shape == shape else (resize_map(mu, c.shape), resize_map(sd, c.shape))
        out.append((c - m) / s if how == "z" else c - m)
    return out


def image_scores(test_canvases: list, train_canvases: list, how: str) -> np.ndarray:
    from vqc.geometry import score
    if how == "max":
        return np.array([c.max() for c in test_canvases])
    if how == "top10":
        return np.array([score(c, 10) for c in test_canvases])
    if how == "zmax":  # per-position statistics of the good images' leave-one-out maps
        shape = train_canvases[0].shape
        stack = np.stack([c for c in train_canvases if c.shape == shape])
        mu, sd = stack.mean(0), stack.std(0) + 1e-6 * stack.std()
        return np.array([((c - mu) / sd).max() if c.shape == shape else np.nan for c in test_canvases])
    raise ValueError(how)


def evaluate_variant(name: str, v: Variant, cache_dir: Path, eval_side: int) -> dict:
    from vqc.data import load_mask
    from vqc.geometry import Plan, to_original
    from vqc.training.metrics import aupro, auroc, pixel_auroc, pointing
    start = time.perf_counter()
    cache = cached(name, v, cache_dir)
    cache_s = time.perf_counter() - start
    start = time.perf_counter()
    test_patch, train_patch = fused(cache, v, cache_dir / cache_key(name, v))
    test_c = canvases(test_patch, cache["test"]["levels"], cache["test"]["plans"], v.sigma)
    train_c = (canvases(train_patch, cache["train"]["levels"], cache["train"]["plans"], v.sigma)
               if v.score == "zmax" or v.calib != "none" else [])
    if v.calib in ("sub", "z"):
        test_c = calibrated(test_c, train_c, v.calib)
    elif v.calib != "none":
        test_c = edge_calibrated(test_c, train_c, v.calib)
    scores = image_scores(test_c, train_c, v.score)
    labels = np.array([s[1] for s in cache["test"]["samples"]])
    maps, masks, point_maps, point_masks = [], [], [], []
    for (path, label, defect, mask_path), canvas, (content, original) in zip(
            cache["test"]["samples"], test_c, cache["test"]["plans"]):
        if label and mask_path is None:
            continue
        ratio = min(1.0, eval_side / max(original))
        shape = (max(1, round(original[0] * ratio)), max(1, round(original[1] * ratio)))
        plan = Plan([], [content], [(0, 0)], content, original)
        amap = to_original(plan, canvas, shape)
        mask = load_mask(Path(mask_path), shape) if mask_path else np.zeros(shape, bool)
        maps.append(amap)
        masks.append(mask)
        if label:
            point_maps.append(amap)
            point_masks.append(mask)
    result = {"image_auroc": auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
              "aupro": aupro(masks, maps), "pointing": pointing(point_masks, point_maps),
              "seconds": round(time.perf_counter() - start, 1), "cache_seconds": round(cache_s, 1)}
    return result


def table(rows: dict, sets: list[str], variants: list[str]) -> str:
    lines = ["| variant | " + " | ".join(sets) + " |", "|" + "---|" * (len(sets) + 1)]
    for variant in variants:
        cells = []
        for s in sets:
            r = rows.get(f"{s}/{variant}")
            cells.append("-" if r is None else
                         f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} / {r['aupro']:.3f} / {r['pointing']:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="results file: read to resume, written after each pair")
    parser.add_argument("--from-json", help="print the table of a stored run")
    parser.add_argument("--cache", default="bench-results/feature-cache")
    parser.add_argument("--eval-side", type=int, default=256)
    args = parser.parse_args()
    sets, variants = args.sets.split(","), args.variants.split(",")
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text()), sets, variants))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    rows = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    for s in sets:
        for name in variants:
            key = f"{s}/{name}"
            if key in rows:
                continue
            rows[key] = evaluate_variant(s, VARIANTS[name], Path(args.cache), args.eval_side)
            r = rows[key]
            print(f"{key}: {r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} / {r['aupro']:.3f} / pointing "
                  f"{r['pointing']:.2f} ({r['seconds']} s, cache {r['cache_seconds']} s)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print("image AUROC / pixel AUROC / AUPRO / pointing")
    print(table(rows, sets, variants))


if __name__ == "__main__":
    main()
