"""Evaluation: per-case Dice and subtype metrics with bootstrap CIs (``metrics``, ``evaluate``), ground truth
(``ground_truth``), figures (``figures``) and the standalone HTML report (``report``)."""
