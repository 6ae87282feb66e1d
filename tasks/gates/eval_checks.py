"""The eval gate's core check, a pure function: thresholds and no regression vs production.

Metric direction is read from the name: most metrics (accuracy, recall, AUROC, CLIPScore)
are better when higher; attack success rate, losses and alignment/uniformity are better
when lower; sizes and timings are not quality metrics and are not compared.
"""

from __future__ import annotations

from typing import Any

from tasks.gates.report import Outcome

LOWER_IS_BETTER = ("asr", "attack_success", "loss", "alignment", "uniformity", "error")
NOT_COMPARED = ("params", "seconds", "time", "size", "count", "num_", "n_", "epoch", "step")


def metric_direction(name: str) -> int:
    """+1 higher is better, -1 lower is better, 0 not a quality metric (skipped)."""
    lowered = name.lower()
    if any(
        lowered.startswith(p) or f"_{p}" in lowered or lowered.endswith(p) for p in NOT_COMPARED
    ):
        return 0
    if any(tok in lowered for tok in LOWER_IS_BETTER):
        return -1
    return 1


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_eval(
    metrics: dict[str, dict[str, Any]],
    candidate: str,
    min_zeroshot_acc1: float,
    max_regression: float,
    production_metrics: dict[str, Any] | None,
) -> list[Outcome]:
    """Outcomes of the eval gate for `candidate` (a key of `metrics`).

    Checks zeroshot_acc1 >= min_zeroshot_acc1, and, when a production model exists, that no
    shared quality metric is worse than production's by more than max_regression (absolute,
    in the metric's own units, direction-aware). With no production model the regression
    check passes and says so.
    """
    if candidate not in metrics:
        return [
            Outcome(
                name="candidate_has_metrics",
                asset="metrics",
                column=candidate,
                success=False,
                observed=sorted(metrics),
                error=f"no metrics for model {candidate!r}: evaluate it (evaluate.models)",
            )
        ]
    cand = metrics[candidate]
    acc1 = _number(cand.get("zeroshot_acc1"))
    outcomes = [
        Outcome(
            name="min_zeroshot_acc1",
            asset="metrics",
            column="zeroshot_acc1",
            success=acc1 is not None and acc1 >= min_zeroshot_acc1,
            observed=acc1,
            description=f"{candidate} zeroshot_acc1 >= {min_zeroshot_acc1}",
            error=None if acc1 is not None else f"{candidate} has no numeric zeroshot_acc1",
        )
    ]
    if production_metrics is None:
        outcomes.append(
            Outcome(
                name="no_regression_vs_production",
                asset="metrics",
                column=None,
                success=True,
                observed="no production model yet: nothing to regress against",
            )
        )
        return outcomes
    compared = 0
    for name in sorted(set(cand) & set(production_metrics)):
        new, old, direction = _number(cand[name]), _number(production_metrics[name]), 0
        if new is not None and old is not None:
            direction = metric_direction(name)
        if direction == 0:
            continue
        compared += 1
        drop = (old - new) * direction  # > 0 means worse than production
        better = "higher" if direction > 0 else "lower"
        outcomes.append(
            Outcome(
                name="no_regression_vs_production",
                asset="metrics",
                column=name,
                success=drop <= max_regression,
                observed={"candidate": new, "production": old, "drop": round(drop, 6)},
                description=f"drop <= {max_regression} ({better} is better)",
            )
        )
    if compared == 0:
        # a production model with no comparable metric means the gate compared nothing
        outcomes.append(
            Outcome(
                name="no_regression_vs_production",
                asset="metrics",
                column=None,
                success=False,
                observed={"candidate": sorted(cand), "production": sorted(production_metrics)},
                error="production and candidate share no comparable metric",
            )
        )
    return outcomes
