"""The feature study's trained head (bench/feature_study.py): a SimpleNet-style adaptor and
discriminator on frozen patch features. It is a study candidate, not a vqc head (it trailed the
nearest-neighbour head on every set measured), but its numbers are only worth reading if a fit
is repeatable with its seed."""
import importlib.util
import sys
from pathlib import Path

import torch

STUDY = Path(__file__).resolve().parents[1] / "bench" / "feature_study.py"


def _study():
    spec = importlib.util.spec_from_file_location("feature_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_trained_head_fit_repeats_with_its_seed_and_finds_an_outlier_patch():
    study = _study()
    gen = torch.Generator().manual_seed(0)
    train = [torch.randn(16, 6, 6, generator=gen) for _ in range(8)]
    test = torch.randn(16, 6, 6, generator=gen)
    test[:, 2, 3] += 8.0  # one patch far from every good one
    first, _ = study.simplenet_maps(train, [test], noise=0.5, epochs=40, seed=3)
    again, _ = study.simplenet_maps(train, [test], noise=0.5, epochs=40, seed=3)
    other, _ = study.simplenet_maps(train, [test], noise=0.5, epochs=40, seed=4)
    assert torch.equal(first[0], again[0])
    assert not torch.equal(first[0], other[0])
    assert divmod(int(first[0].flatten().argmax()), 6) == (2, 3)
