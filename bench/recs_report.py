"""Markdown tables from `python -m local evaluate --json` results files (what bench/README.md shows).

    python -m bench.recs_report bench/results/recs-eval-global-seed10*.json

Prints, over the files given: per seed, every baseline and the hybrid (NDCG@10 / recall@10) with
the hybrid's ratio to the best baseline; and, when the files hold `--ablation` rows, each signal's
removal as the change in NDCG@10 and recall@10 against the full hybrid, per seed and on average.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from core.recommend.evaluate import BASELINES, HYBRID


def _load(path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    raw = json.loads(path.read_text())
    seed = re.search(r"seed (\d+)", raw.get("source", raw.get("data", "")))
    return (seed.group(1) if seed else path.stem), {r["method"]: r for r in raw["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()
    runs = [(_load(p), p.name) for p in args.files]

    print("| seed | " + " | ".join(BASELINES) + f" | **{HYBRID}** | vs best baseline | file |")
    print("|---" * (len(BASELINES) + 4) + "|")
    for (seed, rows), name in runs:
        cells = [f"{rows[b]['ndcg@10']:.4f} / {rows[b]['recall@10']:.4f}" for b in BASELINES]
        ours = rows[HYBRID]
        best_n = max(rows[b]["ndcg@10"] for b in BASELINES)
        best_r = max(rows[b]["recall@10"] for b in BASELINES)
        ratio = f"x{ours['ndcg@10'] / best_n:.2f} / x{ours['recall@10'] / best_r:.2f}"
        hybrid = f"**{ours['ndcg@10']:.4f} / {ours['recall@10']:.4f}**"
        print(f"| {seed} | " + " | ".join(cells) + f" | {hybrid} | {ratio} | `{name}` |")

    signals = [m.removeprefix("without ") for m in runs[0][0][1] if m.startswith("without ")]
    if not signals:
        return
    print()
    print("| without | " + " | ".join(f"seed {seed}" for (seed, _), _ in runs) + " | mean NDCG@10 | mean recall@10 |")
    print("|---" * (len(runs) + 3) + "|")
    for signal in signals:
        dn, dr, cells = [], [], []
        for (_seed, rows), _name in runs:
            full, cut = rows[HYBRID], rows[f"without {signal}"]
            dn.append(cut["ndcg@10"] / full["ndcg@10"] - 1.0)
            dr.append(cut["recall@10"] / full["recall@10"] - 1.0)
            cells.append(f"{cut['ndcg@10']:.4f} ({dn[-1]:+.1%})")
        mean_n, mean_r = sum(dn) / len(dn), sum(dr) / len(dr)
        print(f"| {signal} | " + " | ".join(cells) + f" | {mean_n:+.1%} | {mean_r:+.1%} |")


if __name__ == "__main__":
    main()
