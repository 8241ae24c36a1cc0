"""results/adaptation.png as scripts/adaptation_experiment.py draws it from the committed
results/adaptation.json: every label readable, none over another or over the curves."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from plot_layout import layout_problems, saved_figure

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("adaptation_experiment",
                                               ROOT / "scripts" / "adaptation_experiment.py")
assert _spec is not None and _spec.loader is not None
adapt = importlib.util.module_from_spec(_spec)
sys.modules["adaptation_experiment"] = adapt
_spec.loader.exec_module(adapt)

RESULTS = ROOT / "results" / "adaptation.json"


def test_committed_adaptation_plot_labels_do_not_collide(tmp_path: Path) -> None:
    data = json.loads(RESULTS.read_text())
    fig = saved_figure(lambda: adapt.plot(data["methods"], tmp_path / "a.png",
                                          adapt.plot_title(data["train_windows"])))
    assert layout_problems(fig) == []
