"""medclip.inference: the layer eval and the demo share (optional packages named when missing)."""

from __future__ import annotations

import sys

import pytest

from medclip.optional import MissingExtraError


def test_missing_open_clip_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from medclip.inference import load_model

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip were not installed
    with pytest.raises(MissingExtraError, match=r"an open_clip model needs.*open-clip-torch.*medclip-kit\[bench\]"):
        load_model("open_clip:ViT-B-32@" + str(tmp_path / "weights.pt"))


def test_eval_and_demo_use_the_inference_layer() -> None:
    import medclip.demo.engine as engine
    import medclip.eval as ev
    import medclip.inference as inf

    assert ev.ZeroShotClassifier is inf.ZeroShotClassifier and ev.ReportDrafter is inf.ReportDrafter
    assert engine.ZeroShotClassifier is inf.ZeroShotClassifier and engine.ReportDrafter is inf.ReportDrafter
