"""Detectors: a score per input and a threshold set at a clean false-alarm budget.

`goodnet` (GoodNetModel: B and B'' side by side, class N above the threshold), `scores`
(what B and B'' say of an input), `calibrate` (the threshold from held-out clean inputs
alone), `roc` (ROC curve, AUROC, detection at a false-alarm rate), `figures` (a repair's
detectors measured), `strip` (STRIP, beside the GoodNet, on the same data and budget).
"""
