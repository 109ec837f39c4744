#!/usr/bin/env python
"""Report labeler vs a plain keyword matcher on the Indiana University chest X-ray reports.

    python benchmarks/labeler_eval.py [--reports PATH] [--min-support 20] [--uncertain positive|negative]
                                      [--versus-policy uncertain|first|all] [--errors CONCEPT]

Reference: the human-indexed MeSH / Open-i terms of each report (``MeSH`` column, e.g.
``Cardiomegaly/borderline;Pulmonary Artery/enlarged``). The mapping from those terms to graph
concepts lives in the graph (``MESH`` and ``OPENI`` cross references, "Heading/qualifier"
meaning that qualifier among the entry's qualifiers); a concept's reference includes its
descendants' terms, mirroring the labeler's is-a propagation. Reports indexed "No Indexing"
are left out. ``no_finding`` is "normal".

Both matchers see the same reports and the same graph phrases. The keyword matcher flags a
finding when any of its (non-anatomic) phrases occurs anywhere in the report: no negation,
no uncertainty, no sections. Prints per-finding precision / recall / F1 / support for both,
macro-F1 over findings with at least ``--min-support`` positive reports, and reports/second.

The IU indexers record every alternative of a differential ("pleural effusion versus pleural
thickening" -> both), so the labeler runs with ``versus_policy="all"`` here; its own default is
CheXpert's "uncertain". A finding that the keyword matcher already gets perfectly, or that is
never negated or hedged in the corpus (so both matchers flag the same reports), cannot be beaten
by the labeler: such ties are listed under the table with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medclip.knowledge import Graph, ReportLabeler  # noqa: E402
from medclip.knowledge.labeler import NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN, VERSUS_POLICIES  # noqa: E402
from medclip.knowledge.matching import PhraseMatcher, tokenize  # noqa: E402


def default_reports() -> Path:
    shared = Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared")
    return shared / "data" / "iu_reports" / "indiana_reports.csv"


def parse_index_terms(cell: str) -> list[tuple[str, frozenset[str]]]:
    """``"Opacity/lung/base/left;Cardiomegaly"`` -> [("opacity", {"lung", "base", "left"}), ("cardiomegaly", {})]."""
    out = []
    for entry in str(cell).split(";"):
        parts = [p.strip().lower() for p in entry.split("/") if p.strip()]
        if parts:
            out.append((parts[0], frozenset(parts[1:])))
    return out


def reference_terms(graph: Graph) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """Per concept: the index terms (own and descendants') that make a report positive."""

    def own(cid: str) -> list[tuple[str, frozenset[str]]]:
        terms = []
        for db in ("MESH", "OPENI"):
            for xref in graph[cid].xref_ids(db):
                head, *quals = [p.strip().lower() for p in xref.split("/")]
                terms.append((head, frozenset(quals)))
        return terms

    out = {}
    for c in graph:
        terms = own(c.id) + [t for d in graph.descendants(c.id) for t in own(d)]
        if terms:
            out[c.id] = terms
    return out


def is_positive(entries: list[tuple[str, frozenset[str]]], terms: list[tuple[str, frozenset[str]]]) -> bool:
    return any(head == th and tq <= quals for head, quals in entries for th, tq in terms)


class KeywordMatcher:
    """The baseline: any finding phrase anywhere in the text is a positive (propagated up the is-a tree)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.matcher = PhraseMatcher((f.text, c.id) for c in graph for f in c.mention_facts if not f.anatomic)
        self.ancestors = {c.id: graph.ancestors(c.id) for c in graph}

    def positives(self, text: str) -> set[str]:
        found = {cid for m in self.matcher.find([t.norm for t in tokenize(text)]) for cid in m.payloads}
        for cid in list(found):
            found.update(self.ancestors[cid])
        abnormal = found - {NO_FINDING, "support_devices", *self.graph.descendants("support_devices")}
        if not abnormal:
            found.add(NO_FINDING)
        else:
            found.discard(NO_FINDING)
        return found


def tie_reason(f1: float, keyword_f1: float, hedged: int) -> str | None:
    """Why the labeler cannot beat the keyword matcher on a finding, or None when it could."""
    if keyword_f1 >= 1.0:
        return "keyword already perfect (F1 1.000)"
    if abs(f1 - keyword_f1) < 1e-9 and hedged == 0:
        return "no negated or hedged mentions in corpus (both flag the same reports)"
    return None


def prf(pred: pd.Series, ref: pd.Series) -> tuple[float, float, float]:
    tp = int((pred & ref).sum())
    fp = int((pred & ~ref).sum())
    fn = int((~pred & ref).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reports", type=Path, default=default_reports())
    ap.add_argument("--min-support", type=int, default=20)
    ap.add_argument(
        "--uncertain",
        choices=["positive", "negative"],
        default="negative",
        help="count the labeler's uncertain mentions as positive or negative (default: %(default)s; "
        "the IU indexers index asserted findings only)",
    )
    ap.add_argument(
        "--versus-policy",
        choices=VERSUS_POLICIES,
        default="all",
        help='the labeler\'s reading of a differential "A versus B" / "A or B" (default: %(default)s, '
        "as the IU indexers index both alternatives; the labeler's own default is 'uncertain')",
    )
    ap.add_argument("--errors", metavar="CONCEPT", help="print the labeler's errors for one concept")
    args = ap.parse_args(argv)
    if not args.reports.is_file():
        print(f"{args.reports}: IU reports not found (set MEDCLIP_SHARED)", file=sys.stderr)
        return 2
    df = pd.read_csv(args.reports)
    missing = {"MeSH", "findings", "impression", "indication"} - set(df.columns)
    if missing:
        print(f"{args.reports}: missing columns {sorted(missing)}", file=sys.stderr)
        return 2
    df = df[df["MeSH"].str.strip().str.lower() != "no indexing"].reset_index(drop=True)
    for col in ("indication", "findings", "impression"):
        df[col] = df[col].fillna("").astype(str)

    graph = Graph.load()
    terms = reference_terms(graph)
    terms[NO_FINDING] = [("normal", frozenset())]
    concepts = [c.id for c in graph if c.id in terms]
    entries = [parse_index_terms(m) for m in df["MeSH"]]
    ref = pd.DataFrame({cid: [is_positive(e, terms[cid]) for e in entries] for cid in concepts})

    labeler = ReportLabeler(graph, versus_policy=args.versus_policy)
    sections = [
        {"indication": a, "findings": b, "impression": c}
        for a, b, c in zip(df["indication"], df["findings"], df["impression"])
    ]
    accept = {POSITIVE, UNCERTAIN} if args.uncertain == "positive" else {POSITIVE}
    t0, c0 = time.perf_counter(), time.process_time()
    results = [labeler.label(s) for s in sections]
    t_labeler, c_labeler = time.perf_counter() - t0, time.process_time() - c0
    pred = pd.DataFrame({cid: [r[cid].status in accept for r in results] for cid in concepts})

    keyword = KeywordMatcher(graph)
    texts = [f"{a}. {b}. {c}" for a, b, c in zip(df["indication"], df["findings"], df["impression"])]
    t0, c0 = time.perf_counter(), time.process_time()
    kw_sets = [keyword.positives(t) for t in texts]
    t_keyword, c_keyword = time.perf_counter() - t0, time.process_time() - c0
    kw = pd.DataFrame({cid: [cid in s for s in kw_sets] for cid in concepts})

    rows = []
    for cid in concepts:
        support = int(ref[cid].sum())
        p, r, f = prf(pred[cid], ref[cid])
        kp, kr, kf = prf(kw[cid], ref[cid])
        rows.append((cid, support, p, r, f, kp, kr, kf))
    rows.sort(key=lambda x: -x[1])
    hedged = {cid: sum(res[cid].status in (NEGATIVE, UNCERTAIN) for res in results) for cid in concepts}
    ties = {
        cid: tie_reason(f, kf, hedged[cid])
        for cid, support, p, r, f, kp, kr, kf in rows
        if support >= args.min_support and f <= kf
    }
    print(
        f"IU chest X-ray reports: {len(df)} indexed reports ({args.reports.name}); "
        f"labeler uncertain counted as {args.uncertain}; versus policy {args.versus_policy!r}"
    )
    header = f"{'finding':28s} {'support':>7s} | {'P':>5s} {'R':>5s} {'F1':>5s} | {'kw P':>5s} {'kw R':>5s} {'kw F1':>5s} | {'dF1':>6s}"
    print(header)
    print("-" * len(header))
    for cid, support, p, r, f, kp, kr, kf in rows:
        flag = (
            ""
            if support < args.min_support
            else ("  <0.85" if f < 0.85 else "")
            + ("  tie (see below)" if ties.get(cid) else "  <=kw" if f <= kf else "")
        )
        print(
            f"{cid:28s} {support:7d} | {p:5.3f} {r:5.3f} {f:5.3f} | {kp:5.3f} {kr:5.3f} {kf:5.3f} | {f - kf:+6.3f}{flag}"
        )
    big = [x for x in rows if x[1] >= args.min_support]
    macro = sum(x[4] for x in big) / len(big)
    macro_kw = sum(x[7] for x in big) / len(big)
    print("-" * len(header))
    print(
        f"macro-F1 over {len(big)} findings with >= {args.min_support} positives: "
        f"labeler {macro:.3f} | keyword {macro_kw:.3f} | ratio {macro / macro_kw:.2f}x"
    )
    if ties:
        print(f"findings with >= {args.min_support} positives where the labeler is not above keyword:")
        for cid, reason in ties.items():
            print(
                f"  {cid}: "
                + (
                    f"tie: {reason}"
                    if reason
                    else f"below keyword ({hedged[cid]} reports with a negated or hedged mention); see --errors {cid}"
                )
            )
    print(
        f"speed, one process: labeler {len(df) / c_labeler:,.0f} reports per CPU-second "
        f"({len(df) / t_labeler:,.0f}/s wall) | keyword {len(df) / c_keyword:,.0f} per CPU-second "
        f"({len(df) / t_keyword:,.0f}/s wall) | labeler/keyword time {c_labeler / c_keyword:.1f}x"
    )
    if args.errors:
        cid = args.errors
        for i in range(len(df)):
            if pred[cid][i] != ref[cid][i]:
                m = results[i][cid]
                kind = "FP" if pred[cid][i] else "FN"
                print(
                    f"{kind} [{df['MeSH'][i][:80]}] {m.status} {m.phrase!r} cue={m.cue!r} :: "
                    f"{(df['findings'][i] + ' || ' + df['impression'][i])[:300]}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
