"""What the model sees (issue 9.1): one PreprocessConfig saved in config.json, one preprocess() for the
cache, the datasets, eval and the demo, and one text length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_train_fit import one_torch_thread  # noqa: F401 (autouse fixture: one CPU thread)

from medclip.model import DualEncoderConfig, PreprocessConfig, preprocess, text_length

# ---------------------------------------------------------------------------------- the config


def test_preprocess_config_round_trips_and_refuses_bad_values() -> None:
    cfg = PreprocessConfig(image_size=96, window="lung", volume_shape=[8, 16, 16], context_length=64)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PreprocessConfig(window=(-600, 1500)).window_spec == (-600.0, 1500.0)
    with pytest.raises(ValueError, match="unknown preprocess keys"):
        PreprocessConfig.from_dict({"image_size": 32, "shard_size": 8})
    assert PreprocessConfig.from_dict({"image_size": 32, "shard_size": 8}, strict=False).image_size == 32
    for bad in ({"window": "lungs"}, {"resize": "crop"}, {"frame": "last"}, {"context_length": 1}):
        with pytest.raises(ValueError, match="preprocess"):
            PreprocessConfig(**bad)


def test_cache_config_maps_to_the_preprocess_config() -> None:
    from medclip.data.cache import CacheConfig

    cache = CacheConfig(image_size=48, window="-600,1500", volume_shape=(8, 16, 16), shard_size=7)
    assert cache.preprocess_config() == PreprocessConfig(image_size=48, window="-600,1500", volume_shape=(8, 16, 16))


def test_an_old_config_json_without_preprocess_loads_with_todays_defaults(tmp_path: Path) -> None:
    from medclip.model import DualEncoder, create_model

    model = create_model("tiny-test", vision={"image_size": 48})
    folder = model.save_pretrained(tmp_path / "model")
    data = json.loads((folder / "config.json").read_text())
    assert "preprocess" in data
    del data["preprocess"]  # written before issue 9.1
    (folder / "config.json").write_text(json.dumps(data))
    loaded = DualEncoder.from_pretrained(folder)
    assert loaded.config.preprocess is None
    assert loaded.config.preprocess_config() == PreprocessConfig(image_size=48, context_length=128)
    assert loaded.context_length == 128


def test_the_model_config_refuses_a_text_length_above_its_tower() -> None:
    data = DualEncoderConfig.from_json(Path(__file__).parents[1] / "medclip/model/configs/tiny-test.json").to_dict()
    data["preprocess"] = {"context_length": 4096}
    with pytest.raises(ValueError, match="more than text.context_length"):
        DualEncoderConfig.from_dict(data)


def test_text_length_has_one_owner() -> None:
    assert text_length(128, None) == 128
    assert text_length(128, 48) == 48
    with pytest.raises(ValueError, match="data.max_text_tokens = 512 is more than the model's text context length"):
        text_length(128, 512)


# ---------------------------------------------------------------------------------- one preprocess()


def test_preprocess_picks_the_frame_and_windows_modality_values() -> None:
    from medclip.io import MedicalImage
    from medclip.io.windowing import to_model_input

    rng = np.random.default_rng(0)
    frames = rng.normal(0, 300, (5, 40, 30)).astype(np.float32)
    image = MedicalImage(array=frames, spacing=(1.0, 0.5, 0.5), affine=None, metadata={"window": None}, source="x")
    cfg = PreprocessConfig(image_size=16, window="lung")
    middle = MedicalImage(array=frames[2], spacing=(0.5, 0.5), affine=None, metadata={"window": None}, source="x")
    assert np.array_equal(preprocess(image, cfg), to_model_input(middle, 16, window="lung"))
    first = MedicalImage(array=frames[0], spacing=(0.5, 0.5), affine=None, metadata={"window": None}, source="x")
    assert np.array_equal(preprocess(image, cfg.with_(frame="first")), to_model_input(first, 16, window="lung"))
    assert np.array_equal(preprocess(image, cfg, slice_index=0), preprocess(image, cfg.with_(frame="first")))
    with pytest.raises(ValueError, match="slice 9 out of range"):
        preprocess(image, cfg, slice_index=9)
