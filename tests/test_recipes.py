"""Dataset recipes: real files where we have them, the published layouts otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclip.data.manifest import read_manifest
from medclip.data.splits import patients_in_several_splits

REPO = Path(__file__).resolve().parents[1]


def recipe(name: str):
    """The packaged recipe ``medclip.recipes.<name>`` (what ``medclip recipe NAME`` runs)."""
    from medclip.recipes import load_recipe

    return load_recipe(name)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(path)


def test_covid_recipe_on_real_files(shared_dir, tmp_path):
    root = shared_dir / "data" / "covid_cxr"
    out = tmp_path / "m.parquet"
    assert recipe("covid_chestxray").main([str(root), "-o", str(out), "--salt", "s"]) == 0
    df = read_manifest(out)
    meta = pd.read_csv(root / "metadata.csv")
    assert len(df) == sum((root / "images" / f).exists() for f in meta["filename"])
    assert df["patient_id"].nunique() == meta["patientid"].nunique()
    assert patients_in_several_splits(df) == []
    assert all(Path(p).exists() for p in df["path"])
    assert not set(meta["patientid"].astype(str)) & set(df["patient_id"])
    covid = [c for c in df.columns if c.startswith("label.") and "covid" in c]
    assert covid and df[covid[0]].sum() == (meta["finding"].fillna("").str.contains("COVID-19")).sum()
    assert (df["report_text"].str.len() > 0).sum() > 300
    from medclip.data.dataset import report_text

    assert sum(bool(report_text(r)) for r in df.to_dict("records")) > 300  # the notes are the training text


def test_iu_recipe_on_real_reports(shared_dir, tmp_path):
    reports = pd.read_csv(shared_dir / "data" / "iu_reports" / "indiana_reports.csv", dtype=str, keep_default_na=False)
    root = tmp_path / "iu"
    root.mkdir()
    reports.to_csv(root / "indiana_reports.csv", index=False)
    uids = reports["uid"].head(30)
    proj = pd.DataFrame(
        {
            "uid": list(uids) * 2,
            "filename": [f"{u}_IM-0001-{k}.dcm.png" for k in (1, 2) for u in uids],
            "projection": ["Frontal"] * 30 + ["Lateral"] * 30,
        }
    )
    proj.to_csv(root / "indiana_projections.csv", index=False)
    for f in proj["filename"].head(50):
        _png(root / "images" / "images_normalized" / f)
    out = tmp_path / "m.parquet"
    recipe("iu_xray").main([str(root), "-o", str(out)])
    df = read_manifest(out)
    assert len(df) == 50  # 10 image files are missing: dropped and counted
    first = reports.set_index("uid").loc[uids.iloc[0]]
    row = df[df["path"].str.contains(f"/{uids.iloc[0]}_IM")].iloc[0]
    assert row["report_findings"] == first["findings"]
    assert row["mesh_problems"] == first["Problems"]
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_mimic_recipe_on_published_layout(tmp_path):
    root = tmp_path / "mimic"
    rows = [
        ("d1", 10000032, 50414267, "PA", "train"),
        ("d2", 10000032, 50414267, "LATERAL", "train"),
        ("d3", 10000764, 57375967, "AP", "validate"),
        ("d4", 10000898, 50771383, "PA", "test"),
    ]
    pd.DataFrame([r[:4] for r in rows], columns=["dicom_id", "subject_id", "study_id", "ViewPosition"]).to_csv(
        root.mkdir() or root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False
    )
    pd.DataFrame(
        [(r[0], r[2], r[1], r[4]) for r in rows], columns=["dicom_id", "study_id", "subject_id", "split"]
    ).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(
        {
            "subject_id": [10000032, 10000764, 10000898],
            "study_id": [50414267, 57375967, 50771383],
            "Cardiomegaly": [1.0, np.nan, -1.0],
            "Pleural Effusion": [0.0, 1.0, np.nan],
        }
    ).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    for d, s, st, *_ in rows:
        _png(root / f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg")
    (root / "files/p10/p10000032/s50414267.txt").write_text(
        "FINAL REPORT\n INDICATION: ___ with cough.\n FINDINGS: Enlarged heart. No effusion.\n IMPRESSION: Cardiomegaly."
    )
    out = tmp_path / "m.parquet"
    recipe("mimic_cxr").main([str(root), "-o", str(out)])
    df = read_manifest(out).set_index(read_manifest(out)["path"].map(lambda p: Path(p).stem))
    assert list(df["split"].sort_index()) == ["train", "train", "val", "test"]
    card = [c for c in df.columns if "cardiomegaly" in c][0]
    assert df.loc["d1", card] == 1.0 and df.loc["d4", card] == -1.0 and np.isnan(df.loc["d3", card])
    assert df.loc["d1", "report_findings"] == "Enlarged heart. No effusion."
    assert df.loc["d1", "report_impression"] == "Cardiomegaly."
    assert df.loc["d1", "study_id"] == df.loc["d2", "study_id"]


def test_chexpert_recipe_on_published_layout(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for split, pid in (("train", "patient00001"), ("train", "patient00002"), ("valid", "patient64541")):
        rel = f"CheXpert-v1.0-small/{split}/{pid}/study1/view1_frontal.jpg"
        _png(tmp_path / rel)
        rows.append(
            {
                "Path": rel,
                "Sex": "Female",
                "Age": 68,
                "Frontal/Lateral": "Frontal",
                "AP/PA": "AP",
                "No Finding": 1.0 if pid.endswith("1") else np.nan,
                "Edema": -1.0,
                "_split": split,
            }
        )
    df = pd.DataFrame(rows)
    df[df["_split"] == "train"].drop(columns="_split").to_csv(root / "train.csv", index=False)
    df[df["_split"] == "valid"].drop(columns="_split").to_csv(root / "valid.csv", index=False)
    out = tmp_path / "m.parquet"
    recipe("chexpert").main([str(root), "-o", str(out)])
    m = read_manifest(out)
    assert len(m) == 3 and all(Path(p).exists() for p in m["path"])
    assert (m["split"] == "test").sum() == 1
    assert set(m["age_group"]) == {"60-69"}
    assert [c for c in m.columns if "edema" in c] and (m[[c for c in m.columns if "edema" in c][0]] == -1).all()


def test_nih_recipe_on_published_layout(tmp_path):
    root = tmp_path / "nih"
    names = ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    for i, n in enumerate(names):
        _png(root / f"images_00{i % 2 + 1}" / "images" / n)
    pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": ["Cardiomegaly|Effusion", "No Finding", "Infiltration"],
            "Follow-up #": [0, 1, 0],
            "Patient ID": [1, 1, 2],
            "Patient Age": [58, 58, 81],
            "Patient Gender": ["M", "M", "F"],
            "View Position": ["PA", "PA", "AP"],
        }
    ).to_csv(root / "Data_Entry_2017.csv", index=False)
    (root / "test_list.txt").write_text("00000002_000.png\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    out = tmp_path / "m.parquet"
    recipe("nih_chestxray14").main([str(root), "-o", str(out)])
    m = read_manifest(out)
    assert len(m) == 3 and all(Path(p).exists() for p in m["path"])
    eff = [c for c in m.columns if "effusion" in c][0]
    assert list(m[eff]) == [1.0, 0.0, 0.0]
    assert m["split"].iloc[2] == "test"
    assert m["patient_id"].iloc[0] == m["patient_id"].iloc[1]


def _shared_set(shared_dir: Path, name: str, table: str) -> Path:
    root = shared_dir / "data" / name
    if not (root / table).is_file():
        pytest.skip(f"{name} not in the shared data")
    return root


def test_kermany_recipe_on_real_files(shared_dir, tmp_path):
    root = _shared_set(shared_dir, "kermany_pneumonia", "labels.csv")
    meta = pd.read_csv(root / "labels.csv", dtype=str)
    out = tmp_path / "m.parquet"
    assert recipe("kermany_pneumonia").main([str(root), "-o", str(out), "--salt", "s"]) == 0
    df = read_manifest(out)
    assert len(df) == len(meta) and all(Path(p).exists() for p in df["path"].head(50))
    assert df["patient_id"].nunique() == meta["patient_key"].nunique()
    assert patients_in_several_splits(df) == []
    assert set(df["split"]) == {"train", "val", "test"}  # the shared copy is train only: split by patient
    assert not set(meta["patient_key"]) & set(df["patient_id"])
    assert df["label.pneumonia"].sum() == (meta["label"] == "PNEUMONIA").sum()
    assert ((df["label.pneumonia"] + df["label.no_finding"]) == 1).all()
    assert df["subtype"].value_counts().to_dict() == meta["subtype"].value_counts().to_dict()
    assert (df["report_text"] == "").all()  # label-only: the text comes from the labels at training time


def test_kermany_recipe_on_published_layout(tmp_path):
    root = tmp_path / "chest_xray"
    names = {
        ("train", "NORMAL"): ["IM-0115-0001.jpeg", "NORMAL2-IM-0383-0001.jpeg"],
        ("train", "PNEUMONIA"): ["person1000_virus_1681.jpeg", "person1000_bacteria_2931.jpeg"],
        ("test", "PNEUMONIA"): ["person1_bacteria_1.jpeg"],
    }
    for (split, label), files in names.items():
        for f in files:
            _png(root / split / label / f)
    out = tmp_path / "m.parquet"
    recipe("kermany_pneumonia").main([str(tmp_path), "-o", str(out)])
    df = read_manifest(out).assign(name=lambda d: d["path"].map(lambda p: Path(p).name)).set_index("name")
    assert len(df) == 5
    assert df.loc["person1000_virus_1681.jpeg", "subtype"] == "viral"
    assert df.loc["person1000_virus_1681.jpeg", "patient_id"] == df.loc["person1000_bacteria_2931.jpeg", "patient_id"]
    assert df.loc["person1_bacteria_1.jpeg", "split"] == "test" and df.loc["IM-0115-0001.jpeg", "split"] == "train"
    assert df.loc["NORMAL2-IM-0383-0001.jpeg", "label.no_finding"] == 1.0


def test_kermany_recipe_names_a_file_it_cannot_parse(tmp_path):
    _png(tmp_path / "train" / "PNEUMONIA" / "scan_17.jpeg")
    with pytest.raises(ValueError, match="scan_17.jpeg: not a Kermany file name"):
        recipe("kermany_pneumonia").records(tmp_path)


def test_medpix_recipe_on_real_files(shared_dir, tmp_path):
    root = _shared_set(shared_dir, "medpix", "metadata.csv")
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    out = tmp_path / "m.parquet"
    assert recipe("medpix").main([str(root), "-o", str(out), "--salt", "s"]) == 0
    df = read_manifest(out)
    assert len(df) == len(meta) and all(Path(p).exists() for p in df["path"].head(50))
    assert df["patient_id"].nunique() == meta["case_id"].nunique() == df["study_id"].nunique()
    assert patients_in_several_splits(df) == []  # the images of a case stay together
    assert not set(meta["case_id"]) & set(df["patient_id"])
    assert set(df["modality"]) == {"CT", "MR"}
    assert (df["modality"] == "CT").sum() == (meta["type"] == "CT").sum()
    regions = set(df["body_region"]) - {""}
    assert len(regions) == 12 and (df["body_region"] != "").mean() > 0.9
    assert set(df["plane"]) == {"axial", "coronal", "sagittal", ""}
    from medclip.data.dataset import report_text

    texts = [report_text(r) for r in df.to_dict("records")]
    assert sum(bool(t) for t in texts) == (meta["caption"].str.strip() != "").sum()  # the captions are the text
    assert set(df["sex"]) <= {"M", "F", ""} and "age" not in df.columns


def test_medpix_recipe_names_a_table_without_captions(tmp_path):
    pd.DataFrame({"image": ["images/a.jpg"], "case_id": ["MPX1"], "type": ["CT"]}).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    with pytest.raises(ValueError, match=r"metadata.csv: missing columns \['caption'\]"):
        recipe("medpix").records(tmp_path)


def test_bundled_kermany_subset_is_attributed_and_splits_by_patient(tmp_path):
    from medclip.recipes.base import combine_manifests
    from medclip.recipes.kermany_pneumonia import sample_kermany_manifest
    from medclip.sample import SAMPLE_KERMANY

    labels = pd.read_csv(SAMPLE_KERMANY / "labels.csv")
    attribution = pd.read_csv(SAMPLE_KERMANY / "ATTRIBUTION.csv")
    files = sorted(p.relative_to(SAMPLE_KERMANY).as_posix() for p in (SAMPLE_KERMANY / "images").iterdir())
    assert files == sorted(labels["image"]) == sorted(attribution["file"])  # every image attributed, none extra
    assert set(attribution["license"]) == {"CC BY 4.0"} and attribution["changes"].str.contains("resized").all()
    assert sum((SAMPLE_KERMANY / f).stat().st_size for f in files) < 3_000_000
    df = sample_kermany_manifest(tmp_path / "k.parquet", salt="s")
    assert len(df) == 360 and patients_in_several_splits(df) == []
    test = df[df["split"] == "test"]
    assert len(test) >= 60 and 0 < test["label.pneumonia"].mean() < 1  # both classes among unseen patients
    other = tmp_path / "o.parquet"
    from medclip.data.manifest import write_manifest

    write_manifest(df.head(3).assign(image_id=["a", "b", "c"]), other, root=SAMPLE_KERMANY)
    both = combine_manifests([tmp_path / "k.parquet", other], tmp_path / "both.parquet")
    assert len(both) == 363 and all(
        Path(p).is_absolute() and Path(p).exists() for p in read_manifest(tmp_path / "both.parquet")["path"]
    )
    with pytest.raises(ValueError, match="share image ids"):
        combine_manifests([tmp_path / "k.parquet", tmp_path / "k.parquet"], tmp_path / "dup.parquet")


def test_medclip_recipe_lists_and_runs_every_recipe_of_datasets(capsys):
    """``medclip recipe --list`` names one recipe per dataset folder with a card; NAME runs the packaged one."""
    from medclip.cli import main
    from medclip.recipes import RECIPES

    folders = sorted(p.parent.name for p in (REPO / "datasets").glob("*/CARD.md"))
    assert folders == sorted(RECIPES)
    assert main(["recipe", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(RECIPES) and all("manifest" in line for line in listed)
    assert main(["recipe", "no_such_dataset", "x", "-o", "y.parquet"]) == 2
    assert "no recipe named 'no_such_dataset'" in capsys.readouterr().err


def test_old_recipe_scripts_are_thin_and_write_the_same_manifest(tmp_path):
    """``python datasets/<name>/recipe.py`` still works and gives what ``medclip recipe <name>`` gives."""
    from medclip.cli import main
    from medclip.recipes import RECIPES
    from medclip.sample import SAMPLE_KERMANY

    for name in RECIPES:
        text = (REPO / "datasets" / name / "recipe.py").read_text()
        assert f"from medclip.recipes.{name} import main" in text and "def " not in text, name
    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    assert main(["recipe", "kermany_pneumonia", str(SAMPLE_KERMANY), "-o", str(new), "--salt", "s", "-q"]) == 0
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets" / "kermany_pneumonia" / "recipe.py"),
            str(SAMPLE_KERMANY),
            "-o",
            str(old),
            "--salt",
            "s",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    columns = ["image_id", "patient_id", "split", "label.pneumonia", "subtype"]
    pd.testing.assert_frame_equal(read_manifest(new)[columns], read_manifest(old)[columns])
