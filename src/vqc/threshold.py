"""The decision threshold and the verdict it gives a score. Torch-free.

A `Threshold` is the score at and above which a part is rejected, the policy that chose it
("false-reject-rate=0.01", "f1", "cost", "manual", ...) and how it was chosen (`details`: the
data it was validated on, its false-reject rate there, who set it, a warning). It is stored as
a plain JSON object in a model file's header, a line bundle's manifest and a store version's
evidence; `Threshold.of` reads that object and `as_dict` writes it. Everything else reads the
threshold through this type: its stored keys are this module's business alone.

A `Verdict` is what vqc says of one part: ok, defective, or error (the part could not be
judged: camera lost, not recorded). The PLC reads it as OK / NG / ERROR (`Verdict.plc`).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .errors import VqcError


class Verdict(str, enum.Enum):
    OK = "ok"
    DEFECTIVE = "defective"
    ERROR = "error"

    @property
    def plc(self) -> str:
        """The result code a PLC reads."""
        return {"ok": "OK", "defective": "NG", "error": "ERROR"}[self.value]

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Threshold:
    value: float
    policy: str
    details: Mapping[str, Any] = field(default_factory=dict)  # how it was chosen: validated_on, n_images, ...

    def __post_init__(self):
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise VqcError(f"a threshold is a finite number (got {self.value!r})")
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @classmethod
    def of(cls, stored: Mapping | None) -> "Threshold | None":
        """The threshold from its stored JSON object (None stays None: a model without one)."""
        if stored is None:
            return None
        try:
            details = {k: v for k, v in stored.items() if k not in ("value", "policy")}
            return cls(stored["value"], str(stored["policy"]), details)
        except (KeyError, TypeError, AttributeError):
            raise VqcError(f"a stored threshold has no value or policy: {stored!r}") from None

    def as_dict(self) -> dict:
        """The JSON object it is stored as."""
        return {"policy": self.policy, "value": self.value, **self.details}

    def judge(self, score: float) -> Verdict:
        return Verdict.DEFECTIVE if score >= self.value else Verdict.OK

    @property
    def warning(self) -> str | None:
        """Said when the threshold was set: e.g. it rests on too few good images."""
        return self.details.get("warning")

    @property
    def validated_on(self) -> str | None:
        """The data it was chosen on."""
        return self.details.get("validated_on")

    def describe(self) -> str:
        """The value and the policy."""
        return f"{self.value:.6g} ({self.policy})"

    def summary(self) -> str:
        """The value, the policy and what it was chosen on, as `vqc fit` prints it."""
        d = self.details
        rate = f", defect rate {d['defect_rate']:g} ({d['defect_rate_from']})" if "defect_rate" in d else ""
        return f"{self.value:.6g} ({self.policy}, on {d.get('n_images')} images: {self.validated_on}{rate})"

    def explain(self) -> str:
        """The value, the policy and every detail, as `vqc threshold` prints it."""
        extra = ", ".join(f"{k} {v}" for k, v in self.details.items())
        return f"{self.value:.6g} ({self.policy}; {extra})"

    def choice_options(self) -> dict:
        """The options its policy was applied with (costs, defect rate, consent to a high reject
        rate), so that the same choice can be made again on new data (vqc update)."""
        d = self.details
        return {"fp_cost": d.get("fp_cost", 1.0), "fn_cost": d.get("fn_cost", 10.0),
                "defect_rate": d.get("defect_rate"), "allow_high_reject": bool(d.get("high_reject_allowed"))}

    def with_details(self, **details) -> "Threshold":
        return Threshold(self.value, self.policy, {**self.details, **details})


def stored(threshold: Threshold | None) -> dict | None:
    """What a model file, a bundle or a store version keeps of a threshold (None: none set)."""
    return None if threshold is None else threshold.as_dict()
