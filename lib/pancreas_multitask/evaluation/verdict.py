"""Three-state verdicts on a target that respect the confidence interval.

* **met**: the 95 % CI's lower bound reaches the target;
* **not met**: the CI's upper bound is below the target;
* **undecided**: otherwise, and always when the split cannot decide (too few cases, cases without a
  prediction, a class of the manifest absent from the truth); the reason says which.

``None`` means *not assessable* (no value at all, e.g. macro-F1 on a one-class split). A verdict is
never given on the point estimate alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MET, NOT_MET, UNDECIDED = "met", "not met", "undecided"
NOT_ASSESSABLE = "not assessable"
# Below this many cases a percentile bootstrap interval is too narrow to trust (its coverage falls well
# under 95 %), so no target is judged however far the estimate lies from it.
MIN_CASES_FOR_VERDICT = 10


@dataclass(frozen=True)
class Verdict:
    state: str  # MET, NOT_MET, UNDECIDED or NOT_ASSESSABLE
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"verdict": self.state, "reason": self.reason}


def judge(value: float | None, ci: Sequence[float] | None, threshold: float, n: int, *, blockers: Sequence[str] = (), not_assessable: str | None = None) -> Verdict:
    """The verdict on ``value`` (with its 95 % ``ci`` over ``n`` cases) against ``value >= threshold``.

    ``blockers``: reasons why this split cannot decide the target (each makes the verdict undecided);
    ``not_assessable``: why there is no value to judge.
    """
    if value is None or ci is None:
        return Verdict(NOT_ASSESSABLE, not_assessable or "no value")
    low, high = float(ci[0]), float(ci[1])
    where = f"95 % CI [{low:.3f}, {high:.3f}] against the target {threshold:.2f}"
    reasons = list(blockers)
    if n < MIN_CASES_FOR_VERDICT:
        reasons.insert(0, f"{n} cases: a verdict needs at least {MIN_CASES_FOR_VERDICT}")
    if reasons:
        return Verdict(UNDECIDED, "; ".join(reasons))
    if low >= threshold:
        return Verdict(MET, f"{where}: the whole interval reaches it")
    if high < threshold:
        return Verdict(NOT_MET, f"{where}: the whole interval lies below it")
    return Verdict(UNDECIDED, f"{where}: the interval contains it")
