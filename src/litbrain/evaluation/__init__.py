"""Evaluation: one module per family (tables, figures, metrics.json) + the classic baselines.

* :mod:`.fmri` -- decoder vs ridge vs the generator's oracle vs chance (MindEye retrieval protocol).
* :mod:`.seeg` -- Du-IN vs no pretraining vs logistic regression vs oracle vs chance.
* :mod:`.baselines` -- closed-form ridge, standardised logistic regression.
"""
