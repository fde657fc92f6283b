"""Evaluation: per-case Dice and subtype metrics with bootstrap CIs (``metrics``, ``evaluate``), the stage's
entry (``stage``), figures (``figures``), the standalone HTML report (``report``) and the case viewer
(``viewer``). Ground truth is read by ``dataset.ground_truth``. CLI: ``python -m pancreas_multitask.evaluation``."""
