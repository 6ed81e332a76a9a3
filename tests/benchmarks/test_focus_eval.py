"""FOCUS's evaluation tables: the targets' verdicts follow the measured figures."""

from __future__ import annotations

from benchmarks.focus_eval import FocusEvaluation, _verdicts
from metrics.segmentation import MASK_SCORES


def _evaluation(focus_f1: float, rnet_occ: float, focus_occ: float, focus_clean: float) -> FocusEvaluation:
    scores = {k: 0.5 for k in MASK_SCORES}
    masks = {"FOCUS": {**scores, "f1": focus_f1}, "skin attention": scores, "no mask": scores}
    shapes = {
        ("mean face (no reconstruction)", "occluded"): (5.0, 0.1),
        ("mean face (no reconstruction)", "unoccluded"): (5.0, 0.1),
        ("R-Net, skin attention", "occluded"): (rnet_occ, 0.1),
        ("R-Net, skin attention", "unoccluded"): (4.0, 0.1),
        ("FOCUS encoder", "occluded"): (focus_occ, 0.1),
        ("FOCUS encoder", "unoccluded"): (focus_clean, 0.1),
    }
    e = FocusEvaluation(masks=masks, shapes=shapes, n_test=10, occluded_share=0.2)
    return FocusEvaluation(**{**e.__dict__, "notes": _verdicts(e)})


def test_targets_met_and_not_met():
    good = _evaluation(0.93, 4.5, 4.0, 3.9).markdown()
    assert "mask F1 0.930 (target >= 0.90: met)" in good
    assert "FOCUS vs R-Net: -11.1% (target <= -10%: met)" in good
    assert "+2.6% (target within 5%: met)" in good
    bad = _evaluation(0.85, 4.5, 4.4, 4.0).markdown()
    assert bad.count("not met") == 3


def test_table_has_every_row_between_mean_face_and_ceiling():
    text = _evaluation(0.9, 4.5, 4.0, 3.9).markdown()
    lines = text.splitlines()
    assert lines.index("| mean face (no reconstruction) | 5.000 ± 0.100 | 5.000 ± 0.100 |") < lines.index(
        "| model's ceiling | 0 | 0 |"
    )
    assert "| FOCUS | 0.500 | 0.500 | 0.500 | 0.900 | 0.500 |" in lines
