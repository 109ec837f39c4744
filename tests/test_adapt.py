"""Few-shot features and `medclip adapt` (linear probe, GDA, Tip-Adapter(-F), CoOp, LoRA) on a tiny
seeded model and manifest: each method does what it claims, classifiers are saved with provenance and
read back by `medclip eval --adapter`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclip.adapt.cli import add_adapt_parser
from medclip.adapt.methods import ShotSet, fit_coop, fit_lora, fit_tip_adapter, lora_model
from medclip.adapt.store import load_adapter
from medclip.checkpoint import CheckpointDir, StaleFileError, model_fingerprint
from medclip.data.manifest import write_manifest
from medclip.eval.cli import add_eval_parser
from medclip.eval.runner import EvalOptions, Evaluator, format_results
from medclip.inference.zeroshot import ZeroShotClassifier
from medclip.model import create_model

EFFUSION = "FINDINGS: Right pleural effusion. Heart size is normal. IMPRESSION: Pleural effusion."
NORMAL = "FINDINGS: The lungs are clear. No pleural effusion. Heart size is normal. IMPRESSION: No acute abnormality."
CARDIO = "FINDINGS: The heart is enlarged. No effusion. IMPRESSION: Cardiomegaly."
FINDINGS = ["pleural_effusion", "cardiomegaly"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, manifest): 24 patients, 2 images each, patient-level splits."""
    root = tmp_path_factory.mktemp("adapt")
    torch.manual_seed(0)
    create_model("tiny-test").save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    rows = []
    kinds = [(EFFUSION, 1.0, 0.0), (NORMAL, 0.0, 0.0), (CARDIO, 0.0, 1.0)]
    for p in range(24):
        text, effusion, cardio = kinds[p % 3]
        split = "train" if p < 15 else "val" if p < 18 else "test"
        for i in range(2):
            img = rng.integers(0, 80, (64, 64)).astype(np.uint8)
            if effusion:
                img[48:, :] += 150
            if cardio:
                img[20:48, 18:46] += 120
            path = root / "images" / f"p{p:02d}_{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(img).save(path)
            rows.append(
                {
                    "image_id": f"img{p:02d}{i}",
                    "path": str(path),
                    "kind": "image",
                    "files": None,
                    "patient_id": f"pat{p:02d}",
                    "study_id": f"st{p:02d}",
                    "series_id": f"st{p:02d}",
                    "modality": "DX",
                    "report_findings": "",
                    "report_impression": "",
                    "report_text": text,
                    "split": split,
                    "label.pleural_effusion": effusion,
                    "label.cardiomegaly": cardio,
                }
            )
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.parquet", root=root)
    return root / "model", manifest


@pytest.fixture(scope="module")
def shots(tiny):
    """(model, zero-shot classifier, ShotSet of 2 shots per class and finding, test split features)."""
    model_dir, manifest = tiny
    model = CheckpointDir(model_dir).load_model()
    ev = Evaluator(model, manifest, EvalOptions(val_split=None, findings=FINDINGS))
    train = ev.split("train")
    zs = ev.zeroshot_classifier()
    y = train.labels(zs.findings)
    idx = np.arange(len(train.frame))[:12]
    labels = y[idx]
    data = ev.dataset(train.frame.iloc[idx].reset_index(drop=True))
    images = torch.stack([data[i]["image"] for i in range(len(idx))])
    shot_set = ShotSet(train.image_features[idx], train.backbone_features[idx], labels, images)
    return model, zs, shot_set, ev


def _run(argv: list[str], add) -> int:
    parser = argparse.ArgumentParser(prog="medclip")
    add(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_fewshot_probes_use_pre_projection_features_by_default_and_say_so(tiny):
    model_dir, manifest = tiny
    model = CheckpointDir(model_dir).load_model()
    opts = dict(val_split=None, findings=FINDINGS, style="sentence")
    out = Evaluator(model, manifest, EvalOptions(shots=(1, 2), fewshot_trials=2, **opts)).run(["fewshot"])
    width = model.visual.backbone.num_features
    assert out["fewshot"]["features"] == {"kind": "backbone", "dim": width}
    assert f"probes on the encoder's {width}-d features before the projection" in format_results(out)
    emb = Evaluator(
        model, manifest, EvalOptions(shots=(1,), fewshot_trials=1, fewshot_features="embedding", **opts)
    ).run(["fewshot"])
    assert emb["fewshot"]["features"] == {"kind": "embedding", "dim": model.config.embed_dim}
    assert "probes on the model's normalised image embedding" in format_results(emb)


def test_backbone_features_project_to_the_embedding(shots):
    model, _, shot_set, _ = shots
    with torch.no_grad():
        projected = torch.nn.functional.normalize(model.visual.proj(shot_set.backbone), dim=-1)
        direct = model.encode_image(shot_set.images, normalize=True)
    torch.testing.assert_close(projected, shot_set.embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(direct, shot_set.embedding, atol=1e-5, rtol=1e-5)


def test_tip_adapter_with_alpha_zero_equals_zero_shot(shots):
    _, zs, shot_set, ev = shots
    test = ev.split("test")
    clf = fit_tip_adapter("backbone", shot_set, zs.findings, zs, alpha=0.0)
    torch.testing.assert_close(
        clf.logits(test.image_features, test.backbone_features).float(), zs.logits(test.image_features)
    )
    cached = fit_tip_adapter("backbone", shot_set, zs.findings, zs, alpha=1.0)
    assert not torch.allclose(
        cached.logits(test.image_features, test.backbone_features), zs.logits(test.image_features)
    )
    # Tip-Adapter-F trains only the cache keys: values and the zero-shot text embeddings are the shots' / prompts'
    tuned = fit_tip_adapter("backbone", shot_set, zs.findings, zs, finetune=True, steps=10, lr=1e-2)
    assert torch.equal(tuned.tensors["values"], cached.tensors["values"])
    assert torch.equal(tuned.tensors["zs_positive"], zs.positive)
    assert not torch.equal(tuned.tensors["keys"], cached.tensors["keys"])


def test_coop_changes_only_the_context_vectors(shots):
    model, zs, shot_set, _ = shots
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = fit_coop(model, shot_set, zs.findings, zs.logit_scale, steps=15, lr=5e-2)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())  # the model is handed back as it came
    assert not torch.equal(clf.tensors["ctx"], clf.tensors["ctx_init"])
    assert clf.tensors["ctx"].shape[0] == len(zs.findings)
    # the learned prompts fit the shots better than their initial context does
    from medclip.adapt.methods import CoOpPrompts, _masked_bce, _targets

    prompts = CoOpPrompts(model, zs.findings)
    y, known = _targets(shot_set.labels)
    with torch.no_grad():
        losses = []
        for ctx in (clf.tensors["ctx_init"], clf.tensors["ctx"]):
            pos, neg = prompts.embed(model, ctx)
            emb = shot_set.embedding
            losses.append(float(_masked_bce(zs.logit_scale * (emb @ pos.T - emb @ neg.T), y, known)))
    assert losses[1] < losses[0]


def test_lora_leaves_the_base_weights_bit_identical_and_merges_to_the_same_outputs(shots):
    model, zs, shot_set, _ = shots
    fingerprint = model_fingerprint(model)
    clf = fit_lora(model, shot_set, zs.findings, zs.logit_scale, steps=4, lr=1e-2, batch_size=8)
    assert model_fingerprint(model) == fingerprint  # the model given is never touched
    unmerged = lora_model(model, clf.tensors, clf.params)
    base = dict(model.state_dict())
    for name, value in unmerged.state_dict().items():
        if ".base_layer." in name:  # the weights under each LoRA layer are the original ones, bit for bit
            assert torch.equal(value, base[name.replace(".base_layer.", ".")])
    assert any(".base_layer." in n for n in unmerged.state_dict())
    merged = clf.merged_model(model)
    tok = model.tokenize(["there is pleural effusion.", "no cardiomegaly."])
    with torch.no_grad():
        for fn in ("encode_image", "encode_text"):
            args = (shot_set.images,) if fn == "encode_image" else (tok["input_ids"], tok["attention_mask"])
            a, b = getattr(unmerged, fn)(*args), getattr(merged, fn)(*args)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(a, getattr(model, fn)(*args), atol=1e-6)  # LoRA did change the outputs
    assert clf.params["targets"] and any(t.startswith("visual.") for t in clf.params["targets"])


def test_adapt_saves_each_method_with_provenance_and_eval_scores_it(tiny, tmp_path, capsys):
    model_dir, manifest = tiny
    code = _run(
        ["adapt", "--checkpoint", str(model_dir), "--manifest", str(manifest), "--shots", "1,2", "--draws", "2"]
        + ["--steps", "3", "--findings", ",".join(FINDINGS)],
        add_adapt_parser,
    )
    assert code == 0
    printed = capsys.readouterr().out
    for method in ("zeroshot", "linear_probe", "gda", "tip_adapter", "tip_adapter_f", "coop", "lora"):
        assert method in printed
    assert "k=0" in printed and "k=2" in printed and "±" in printed
    results = json.loads((model_dir / "adapters" / "adapt.json").read_text())
    assert len(results["shots"]["1"]["coop"]["draw_means"]) == 2
    fingerprint = CheckpointDir(model_dir).fingerprint()
    for method in ("linear_probe", "gda", "tip_adapter", "tip_adapter_f", "coop", "lora"):
        clf, meta = load_adapter(model_dir, method)
        prov = meta["provenance"]
        assert prov["model_fingerprint"] == fingerprint and prov["shots"] == 2 and prov["draw"] == 0
        assert prov["manifest"] == "manifest.parquet" and len(prov["manifest_sha256"]) == 64
        assert prov["shot_patients"] == prov["shot_images"]  # at most one image per patient
        assert clf.findings == FINDINGS
    assert load_adapter(model_dir, "gda")[1]["features"] == "backbone"
    out = tmp_path / "eval"
    code = _run(
        ["eval", "--checkpoint", str(model_dir), "--manifest", str(manifest), "--task", "zeroshot"]
        + ["--adapter", "coop,lora", "--adapter", "gda", "--bootstrap", "20", "-o", str(out)],
        add_eval_parser,
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Saved few-shot classifiers" in printed and "coop (2 shots per class, draw 0" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    got = metrics["adapted"]["classifiers"]
    assert set(got) == {"coop", "lora", "gda"}
    assert got["gda"]["per_finding"]["cardiomegaly"]["n"] == 12
    assert got["lora"]["provenance"]["model_fingerprint"] == fingerprint


def test_an_adapter_of_another_model_is_refused(tiny, tmp_path):
    model_dir, manifest = tiny
    other = tmp_path / "other"
    torch.manual_seed(1)
    create_model("tiny-test").save_pretrained(other)
    code = _run(
        ["adapt", "--checkpoint", str(other), "--manifest", str(manifest), "--shots", "1", "--draws", "1"]
        + ["--methods", "gda", "--findings", "cardiomegaly"],
        add_adapt_parser,
    )
    assert code == 0
    meta = other / "adapters" / "gda" / "adapter.json"
    data = json.loads(meta.read_text())
    data["provenance"]["model_fingerprint"] = "0" * 16
    meta.write_text(json.dumps(data))
    with pytest.raises(StaleFileError, match="medclip adapt --checkpoint"):
        load_adapter(other, "gda")
    with pytest.raises(FileNotFoundError, match="no coop classifier saved"):
        load_adapter(other, "coop")


def test_adapt_refuses_test_patients_among_the_shots(tiny, tmp_path):
    model_dir, manifest = tiny
    frame = pd.read_parquet(manifest)
    frame.loc[frame["image_id"] == "img230", "split"] = "train"  # patient 23 now in train and test
    leaky = write_manifest(frame, tmp_path / "leaky.parquet", root=manifest.parent)
    with pytest.raises(ValueError, match="in both the train and the test split"):
        _run(
            ["adapt", "--checkpoint", str(model_dir), "--manifest", str(leaky), "--methods", "gda", "--no-save"],
            add_adapt_parser,
        )


def test_lora_without_peft_names_the_extra(tiny, monkeypatch):
    import sys

    from medclip.optional import MissingExtraError

    model_dir, manifest = tiny
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'medclip-kit\[adapt\]'"):
        _run(
            ["adapt", "--checkpoint", str(model_dir), "--manifest", str(manifest), "--methods", "lora"],
            add_adapt_parser,
        )


def test_zero_shot_classifier_is_what_tip_adapter_stores(shots):
    _, zs, shot_set, _ = shots
    clf = fit_tip_adapter("embedding", shot_set, zs.findings, zs, alpha=0.0)
    rebuilt = ZeroShotClassifier(zs.findings, clf.tensors["zs_positive"], clf.tensors["zs_negative"], zs.logit_scale)
    torch.testing.assert_close(rebuilt.logits(shot_set.embedding), clf.logits(shot_set.embedding).float())


@pytest.mark.parametrize("method", ["gda", "lora"])
def test_the_demo_serves_an_adapted_classifier_with_its_provenance(tiny, tmp_path, method):
    import shutil

    from medclip.demo.engine import TriageEngine

    model_dir, manifest = tiny
    ckpt = tmp_path / "model"
    shutil.copytree(model_dir, ckpt, ignore=shutil.ignore_patterns("adapters"))
    argv = ["adapt", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shots", "2", "--draws", "1"]
    assert _run(argv + ["--methods", method, "--steps", "2", "--findings", ",".join(FINDINGS)], add_adapt_parser) == 0
    engine = TriageEngine.load(ckpt, adapter=method)
    assert engine.classifier.findings == FINDINGS
    assert f"few-shot classifier {method} (2 shots per class, draw 0" in engine.gallery_note
    ev = Evaluator(engine.model, manifest, EvalOptions(val_split=None, findings=FINDINGS))
    test = ev.split("test")
    data = ev.dataset(test.frame)
    pixels = np.round(data[0]["image"][0].numpy() * 255).astype(np.uint8)
    result = engine.predict(pixels)
    clf, _ = load_adapter(ckpt, method)
    from medclip.adapt.runner import classifier_logits

    expected = torch.sigmoid(classifier_logits(clf, ev, "test")[0]).numpy()
    got = {f.concept_id: f.probability for f in result.findings}
    np.testing.assert_allclose([got[c] for c in FINDINGS], expected, atol=1e-4)
    # operating points were chosen for zero-shot scores: none applies to the adapted classifier
    assert all(f.status == "not calibrated" for f in result.findings)


def test_a_shot_count_without_enough_patients_is_left_out_and_said(tiny, tmp_path, capsys):
    model_dir, manifest = tiny  # 5 training patients per finding: k=6 cannot be drawn
    argv = ["adapt", "--checkpoint", str(model_dir), "--manifest", str(manifest), "--shots", "2,6", "--draws", "1"]
    assert _run(argv + ["--methods", "gda", "--no-save", "-o", str(tmp_path)], add_adapt_parser) == 0
    printed = capsys.readouterr().out
    assert "k=6: left out pleural_effusion, cardiomegaly" in printed
    results = json.loads((tmp_path / "adapt.json").read_text())
    assert results["shots"]["6"]["gda"]["draw_means"] == [] and len(results["shots"]["2"]["gda"]["draw_means"]) == 1
    assert "saved" not in results


def test_lora_leaves_out_depthwise_convolutions_it_cannot_merge():
    from torch import nn

    from medclip.adapt.methods import _inject, lora_targets

    torch.manual_seed(0)
    model = create_model("tiny-test", vision={"name": "mobilenetv3_small_050"})
    targets = lora_targets(model)
    vision = [t for t in targets if t.startswith("visual.")]
    assert vision and all(
        isinstance(model.get_submodule(t), nn.Linear) or model.get_submodule(t).groups == 1 for t in vision
    )
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.visual.modules())  # there were some
    _inject(model, targets, rank=4, alpha=8.0)  # peft refuses a depthwise target: none is given


def test_lora_scores_with_the_zero_shot_prompts_so_no_training_step_is_zero_shot(shots):
    model, zs, shot_set, ev = shots
    test = ev.split("test")
    clf = fit_lora(model, shot_set, zs.findings, zs.logit_scale, steps=0, prompt_style=zs.style)
    merged = clf.merged_model(model)
    with torch.no_grad():
        emb = merged.encode_image(ev.dataset(test.frame)[0]["image"][None], normalize=True)
    torch.testing.assert_close(clf.logits(emb).float(), zs.logits(test.image_features[:1]), atol=1e-4, rtol=1e-4)


def test_run_adapt_keeps_per_draw_test_scores_for_paired_patient_bootstraps(tiny, tmp_path):
    from medclip.adapt.runner import paired_difference_ci, run_adapt
    from medclip.eval.metrics import auroc

    model_dir, manifest = tiny
    res = run_adapt(
        model_dir, manifest, shots=(1, 2), methods=["gda", "tip_adapter"], draws=2, findings=FINDINGS,
        save=False, output=tmp_path, keep_scores=True,
    )  # fmt: skip
    assert "scores" not in json.loads((tmp_path / "adapt.json").read_text())  # kept in memory only
    sc = res["scores"]
    n = res["data"]["test"]["images"]
    assert sc["labels"].shape == (n, 2) and sc["zeroshot"].shape == (n, 2) and len(sc["patients"]) == n
    for k in (1, 2):
        for m in ("gda", "tip_adapter"):
            draws = sc["logits"][k][m]
            assert len(draws) == 2 and all(d["cardiomegaly"].shape == (n,) for d in draws)
            y = sc["labels"][:, 1]
            known = np.isin(y, (0.0, 1.0))
            mean = np.mean([auroc(y[known], d["cardiomegaly"][known]) for d in draws])
            assert mean == pytest.approx(res["shots"][k][m]["per_finding"]["cardiomegaly"])
            est = paired_difference_ci(sc, k, m, "cardiomegaly", n_boot=50)
            assert est.value == pytest.approx(mean - res["zeroshot"]["per_finding"]["cardiomegaly"])
            assert est.n_groups == len(set(sc["patients"][known]))  # resampled by patient
    assert paired_difference_ci(sc, 2, "coop", "cardiomegaly") is None  # not run


def test_paired_difference_of_zero_shot_with_itself_is_exactly_zero():
    from medclip.adapt.runner import paired_difference_ci

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20, dtype=float)[:, None]
    zs = rng.normal(size=(40, 1)) + y
    scores = {
        "patients": np.repeat(np.arange(20), 2).astype(str),
        "labels": y,
        "zeroshot": zs,
        "zeroshot_findings": ["f"],
        "logits": {1: {"m": [{"f": zs[:, 0].copy()}, {"f": zs[:, 0].copy()}]}},
    }
    est = paired_difference_ci(scores, 1, "m", "f", n_boot=200)
    assert est.value == 0 and est.low == 0 and est.high == 0 and est.n_groups == 20


def test_run_adapt_scores_against_a_zero_shot_classifier_it_is_given(tiny, tmp_path):
    """A label the knowledge graph has no finding prompt for (e.g. Kermany's viral vs bacterial) is scored
    against the zero-shot classifier the caller builds (the benchmark: the pneumonia-subtype attribute prompts)."""
    from medclip.adapt.runner import run_adapt

    model_dir, manifest = tiny
    frame = pd.read_parquet(manifest)
    frame["label.not_in_the_graph"] = frame["label.cardiomegaly"]
    custom = write_manifest(frame, tmp_path / "custom.parquet", root=manifest.parent)
    model = CheckpointDir(model_dir).load_model()
    base = ZeroShotClassifier.from_model(model, ["cardiomegaly"])
    zs = ZeroShotClassifier(["not_in_the_graph"], base.positive, base.negative, base.logit_scale)
    res = run_adapt(
        model_dir, custom, shots=(2,), methods=["gda", "tip_adapter"], draws=1, save=False, output=tmp_path,
        zeroshot=zs,
    )  # fmt: skip
    ref = run_adapt(
        model_dir, manifest, shots=(2,), methods=["gda"], draws=1, findings=["cardiomegaly"], save=False,
        output=tmp_path / "ref",
    )  # fmt: skip
    assert res["findings"] == ["not_in_the_graph"]
    assert res["zeroshot"]["mean"] == pytest.approx(ref["zeroshot"]["per_finding"]["cardiomegaly"])
    assert res["shots"][2]["gda"]["mean"] == pytest.approx(ref["shots"][2]["gda"]["mean"])


def _benchmark():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation.py"
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["adaptation_benchmark"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _frame(names, patients, splits):
    return pd.DataFrame({"path": [f"images/{n}" for n in names], "patient_id": patients, "split": splits})


def test_benchmark_takes_the_checkpoints_own_split_from_the_manifest_its_record_names(tiny, tmp_path, monkeypatch):
    from medclip.data.storage import content_fingerprint

    bench = _benchmark()
    model_dir, _ = tiny
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    own = _frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], ["1", "2", "3", "4"], ["train", "test", "test", "val"])
    own.to_parquet(run / "data" / "covid.parquet")
    (run / "config.yaml").write_text(
        f"data:\n  sources:\n  - name: covid\n    manifest: {run / 'data' / 'covid.parquet'}\n"
    )
    ckpt = run / "model"
    ckpt.mkdir()
    fp = content_fingerprint(run / "data" / "covid.parquet")
    monkeypatch.setattr(bench, "training_sources", lambda c: [{"name": "covid", "manifest_sha256": fp}])
    sources = bench.find_sources(ckpt, [])
    assert sources == {"covid": run / "data" / "covid.parquet"}
    # the benchmark's frame (another salt: other patient ids) takes the split of the same files
    frame = _frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], ["x", "y", "z", "w", "v"], ["test"] * 5)
    got, why = bench.own_split(frame, sources, min_cover=0.5)
    assert "own split" in why and list(got["split"]) == ["train", "test", "test", "val", "unused"]
    assert bench.seen_files(sources) == {"covid": {"a.jpg", "d.jpg"}}
    # a record whose manifest cannot be found: refused unless --allow-covid-trained
    monkeypatch.setattr(bench, "training_sources", lambda c: [{"name": "covid", "manifest_sha256": "0" * 16}])
    assert bench.find_sources(ckpt, []) == {"covid": None}
    with pytest.raises(SystemExit, match="no manifest with the SHA-256"):
        bench.main(["--checkpoint", str(model_dir), "--workdir", str(tmp_path / "w")])


def test_benchmark_leaves_out_test_patients_with_an_image_the_model_trained_on():
    bench = _benchmark()
    frame = _frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], ["1", "1", "2", "3", "3"], ["test"] * 4 + ["train"])
    got, images, patients = bench.leave_out_seen(frame, {"a.jpg", "e.jpg"})
    assert list(got["split"]) == ["seen", "seen", "test", "test", "train"]  # patient 1's other image too
    assert (images, patients) == (2, 1)


def test_the_quick_starts_export_is_traced_to_covid_chestxray_file_names():
    """The bundled export is covid-chestxray images re-encoded as DICOM: its ATTRIBUTION.csv names the originals,
    which is how the benchmark finds the quick start model's training images among its covid test images."""
    bench = _benchmark()
    table = bench._attribution()
    export = {k: v for k, v in table.items() if k.startswith("study_")}
    assert len(export) == 67 and all(v.endswith((".jpg", ".jpeg", ".png")) for v in export.values())
    assert bench.seen_files({"sample": None})["sample"] == set(export.values())
    assert table["images/IM-0117-0001.jpeg"] == "IM-0117-0001.jpeg"  # the Kermany subset keeps its names


def test_benchmark_subsamples_whole_patients_of_one_split():
    bench = _benchmark()
    frame = _frame([f"{i}.jpg" for i in range(12)], [str(i // 2) for i in range(12)], ["test"] * 8 + ["train"] * 4)
    got = bench.subsample_patients(frame, "test", 2, seed=0)
    kept = got[got["split"] == "test"]
    assert kept["patient_id"].nunique() == 2 and len(kept) == 4
    assert (got["split"].iloc[8:] == "train").all()
