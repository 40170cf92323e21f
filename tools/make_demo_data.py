"""Make the shipped demo set: a seeded random subset of ../shared/data/magnetic_tile.

    python tools/make_demo_data.py ../shared/data/magnetic_tile src/vqc/demo_data/magnetic_tile
"""
import random
import shutil
import sys
from pathlib import Path

N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 60, 12, 6


def main(source: Path, target: Path) -> None:
    rng = random.Random(0)
    if target.exists():
        shutil.rmtree(target)
    picks = {"train/good": N_TRAIN, "test/good": N_TEST_GOOD}
    picks.update({f"test/{d.name}": N_PER_DEFECT for d in sorted((source / "test").iterdir()) if d.name != "good"})
    for split, count in picks.items():
        files = sorted((source / split).glob("*.png"))
        for image in sorted(rng.sample(files, count)):
            (target / split).mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, target / split / image.name)
            mask = source / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
            if split != "test/good" and mask.exists():
                (target / "ground_truth" / image.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(mask, target / "ground_truth" / image.parent.name / mask.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
