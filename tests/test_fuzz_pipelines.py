"""Malformed DICOM at volume through the three paths that read a user's files (issue 19.5): ``medclip index``,
``medclip cache`` and the demo's upload path each take the same seeded mutants (truncations, flipped header and
pixel bytes, overwritten length fields, duplicated chunks of real files of many transfer syntaxes); every mutant is
accounted for (in the manifest, or skipped and listed with a reason; written to the cache, or skipped and counted;
loaded by the demo, or answered with an UploadError), nothing else is raised, the runs finish, and the three paths
agree on which mutants are readable. The mutants run in a child process, so a decoder abort fails this test
instead of ending pytest. ``tests/test_io_fuzz.py`` fuzzes ``load_image`` alone with more mutants."""

from __future__ import annotations

import json

import pytest
from test_io_fuzz import SEED_FILES, fuzz, local_testdata
from test_io_gdcm_crash import run_python, survived

MUTANTS = 150
SEED = 7


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    files = [str(p) for p in map(local_testdata, SEED_FILES) if p is not None]
    if len(files) < 10:
        pytest.skip("pydicom's test files are not on disk")
    root = tmp_path_factory.mktemp("fuzz-pipelines")
    export = root / "export"
    for k in range(MUTANTS):  # one patient folder per mutant: the manifest's rows name them
        _, data, _ = fuzz.mutant(files, SEED, k)
        (export / f"p{k:03d}").mkdir(parents=True)
        (export / f"p{k:03d}" / f"m{k:03d}.dcm").write_bytes(data)
    code = """
        import json, sys
        from pathlib import Path
        import pandas as pd
        import torch
        from medclip.cli import main
        from medclip.demo import TriageEngine, UploadError, read_upload
        from medclip.model import create_model

        root, export = map(Path, sys.argv[1:3])
        out = {}
        out["index_rc"] = main(["index", str(export), "-o", str(root / "m.parquet"), "--salt", "t", "--workers", "1", "-q"])
        manifest = pd.read_parquet(root / "m.parquet")
        out["index_rows"] = len(manifest)
        # every file the index saw, with its status ("ok" or why not); a volume row joins a series' files
        files = pd.read_parquet(root / "m.files.parquet")
        out["file_status"] = {Path(p).name: str(s) for p, s in zip(files["path"], files["status"])}
        skipped = pd.read_csv(root / "m.skipped.csv")
        out["index_skipped"] = sorted(Path(p).name for p in skipped["path"])
        out["index_reasons"] = skipped["reason"].astype(str).tolist()
        # header-only index: every mutant whose header parses reaches the cache, which decodes it
        main(["index", str(export), "-o", str(root / "h.parquet"), "--salt", "t", "--workers", "1", "--no-verify", "-q"])
        header = pd.read_parquet(root / "h.parquet")
        out["header"] = [[i, Path(p).name, k] for i, p, k in zip(header["image_id"], header["path"], header["kind"])]
        out["cache_rc"] = main(["cache", str(root / "h.parquet"), "-o", str(root / "cache"), "--image-size", "32",
                                "--workers", "1", "-q"])
        cache = json.loads((root / "cache" / "cache.json").read_text())
        out["cache_written"] = sum(s["count"] for s in cache["shards"].values())
        out["cache_skipped"] = sorted(cache["skipped"])
        torch.manual_seed(0)
        engine = TriageEngine(create_model("tiny-test", vision={"image_size": 32}).eval(), findings=["pneumonia"])
        demo = {}
        for path in sorted(export.glob("*/*.dcm")):
            try:
                study = read_upload(path)
                view, result = engine.triage(study)
                demo[path.name] = "loaded"
            except UploadError as exc:
                demo[path.name] = "refused: " + str(exc)
            except Exception as exc:  # what this test exists to catch
                demo[path.name] = f"other: {type(exc).__name__}: {exc}"
        out["demo"] = demo
        print(json.dumps(out))
    """
    out = survived(run_python(code, str(root), str(export), timeout=1200))
    return json.loads(out.strip().splitlines()[-1])


def readable(runs: dict) -> set[str]:
    return {name for name, status in runs["file_status"].items() if status == "ok"}


def test_index_accounts_for_every_mutant(runs: dict) -> None:
    assert runs["index_rc"] == 0
    status = runs["file_status"]
    assert len(status) == MUTANTS, "a mutant is missing from the index's file list"
    refused = {name for name, s in status.items() if s != "ok"}
    assert refused == set(runs["index_skipped"]), "a refused mutant is not listed in the skipped file with its reason"
    assert readable(runs) and refused  # both sides exercised
    assert all(reason and reason != "nan" for reason in runs["index_reasons"])
    assert 0 < runs["index_rows"] <= len(readable(runs))  # slices of one series share a volume row


def test_cache_accounts_for_every_image_it_was_given(runs: dict) -> None:
    assert runs["cache_rc"] == 0
    # mutants of one file keep its SOP Instance UID, so some rows share an image id: the cache keys by it
    ids = {image_id for image_id, _, _ in runs["header"]}
    skipped = set(runs["cache_skipped"])
    # every image id is written or skipped (a duplicated id may be both: one row decodes, another does not)
    assert len(ids) <= runs["cache_written"] + len(skipped) <= len(runs["header"])
    assert runs["cache_written"] and skipped
    # a single image whose id no other row shares: the cache decodes it iff the verifying index read it
    once = [row for row in runs["header"] if sum(r[0] == row[0] for r in runs["header"]) == 1 and row[2] == "image"]
    assert once
    for image_id, name, _ in once:
        assert (image_id not in skipped) == (name in readable(runs)), name


def test_demo_answers_every_mutant_and_agrees_with_the_index(runs: dict) -> None:
    demo = runs["demo"]
    assert len(demo) == MUTANTS
    other = {name: outcome for name, outcome in demo.items() if outcome.startswith("other")}
    assert not other, f"the demo's upload path raised something other than UploadError: {other}"
    for name, outcome in demo.items():
        if outcome.startswith("refused"):
            assert outcome.startswith(f"refused: {name}: "), outcome  # the message names the upload
    assert {name for name, outcome in demo.items() if outcome == "loaded"} == readable(runs)
