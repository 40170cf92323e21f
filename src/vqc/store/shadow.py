"""Shadow scores, and the comparison of a candidate with the live model on the same parts.

A shadow candidate scores what the live model scored, after the answer; its scores go to
`shadow_scores` beside the live inspection and are never acted on. `compare` puts two versions
side by side on the inspections both scored (live or in shadow): how often their verdicts
agree, the false-reject rate of each on parts the operators confirmed good, and the confirmed
defects each would pass.
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from ..records import Inspection
from .reviews import latest_reviews
from .tables import ShadowScore


def add_shadow_scores(database: sa.Engine, rows: list[dict]) -> None:
    """rows: inspection_id, model_version, score, verdict, threshold."""
    now = datetime.now(timezone.utc)
    with database.begin() as connection:
        connection.execute(sa.insert(ShadowScore), [{**row, "scored_at": now} for row in rows])


def scores_of(database: sa.Engine, version: str) -> dict[int, tuple[float, str | None]]:
    """inspection id -> (score, verdict) given by `version`, live or in shadow."""
    live = sa.select(Inspection.id, Inspection.score, Inspection.verdict).where(Inspection.model_version == version)
    shadow = sa.select(ShadowScore.inspection_id, ShadowScore.score, ShadowScore.verdict).where(
        ShadowScore.model_version == version)
    with database.connect() as connection:
        found = {i: (s, v) for i, s, v in connection.execute(shadow)}
        found.update({i: (s, v) for i, s, v in connection.execute(live)})
    return found


def compare(database: sa.Engine, live: str, candidate: str) -> dict:
    """The two versions on the inspections both scored, with the operators' reviews of them."""
    a, b = scores_of(database, live), scores_of(database, candidate)
    both = sorted(set(a) & set(b))
    reviews = latest_reviews(database, both) if both else {}
    good = [i for i in both if i in reviews and reviews[i]["label"] == "good"]
    bad = [i for i in both if i in reviews and reviews[i]["label"] == "defective"]

    def side(scores) -> dict:
        rejects = [i for i in good if scores[i][1] == "defective"]
        passed = [i for i in bad if scores[i][1] == "ok"]
        return {"false_rejects": len(rejects), "false_reject_rate": len(rejects) / len(good) if good else None,
                "confirmed_defects_passed": len(passed), "passed_ids": passed,
                "rejected": sum(scores[i][1] == "defective" for i in both)}
    agree = sum(a[i][1] == b[i][1] for i in both)
    return {"live": live, "candidate": candidate, "inspections": len(both), "agreement": agree / len(both) if both else None,
            "confirmed_good": len(good), "confirmed_defective": len(bad),
            "live_side": side(a), "candidate_side": side(b),
            "candidate_would_pass": [i for i in bad if b[i][1] == "ok" and a[i][1] == "defective"]}
