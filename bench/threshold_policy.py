"""Where the stored threshold comes from, and what it gives on good parts the fit never saw.

    python bench/threshold_policy.py [DATA]     # default: the demo set shipped with vqc

Fits the default detector (efficientnet_lite0 + knn) twice: with the normal range from 10 % of
the good images held out (`leave_one_out=False`) and from every good image
scored leave-one-out (the default). For each it prints the images the 1 % false-reject
threshold rests on, the threshold, the median of the stored good scores, and, on the test split,
the false-reject rate on good images and the miss rate on defective ones at that threshold.
"""
from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import vqc
    from vqc.training.demo import demo_data
    from vqc.training.evaluation import evaluate
    data = sys.argv[1] if len(sys.argv) > 1 else demo_data()
    print(f"data: {data}")
    print("| normal range from | images | threshold | median good score | test false-reject rate | test miss rate | image AUROC |")
    print("|---|---|---|---|---|---|---|")
    for leave_one_out in (False, True):
        model = vqc.AnomalyModel(leave_one_out=leave_one_out).fit(data, progress=False)
        result = evaluate(model, data, progress=False)
        at = result["at_threshold"]
        t = model.threshold
        print(f"| {t.validated_on} | {t.details['n_images']} | {t.value:.2f} | "
              f"{np.median(model.info['normal_scores']):.2f} | {at['false_reject_rate']:.3f} of {at['n_good']} | "
              f"{at['miss_rate']:.3f} | {result['image_auroc']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
