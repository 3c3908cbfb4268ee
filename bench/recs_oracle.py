"""How far a recommender could get on the development data: rank with the generator's hidden truth.

    python -m bench.recs_oracle --seeds 100 101 102 103 104

`local.synth_ratings` draws each user's choices from ``exp(static appeal + log exposure(t) +
affinity / temperature)`` (plus a genre focus per run of choices and Gumbel noise) and rates them
from quality and affinity plus noise. With those hidden variables, an "oracle" ranks every
unseen product for each user's held-out positives (the same split, one time cutoff T, and
metrics as ``python -m local evaluate``) by the log-probability of being chosen and then rated
>= 4. Dropping parts of the truth shows which part the data's held-out positives depend on:

- ``timed``: the item's exposure at T (release, hype after release, ageing, its genres' wave);
  untimed oracles use one exposure for all times;
- ``personal``: the user's latent affinity (with its drift); non-personal oracles use none.

It is a diagnostic, not a recommender: no real data set comes with its generator. The run
genre focus and the noise are left out (they are drawn fresh), so the oracle is a strong
reference, not an exact upper bound.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from bench.common import report
from core.recommend.data import F32, I32
from core.recommend.metrics import Split, evaluate_scores, make_split
from local.evaluation import synthetic
from local.synth_ratings import SynthConfig, log_exposure, simulate


def oracle(seed: int) -> tuple[Split, Callable[..., Callable[[I32], F32]]]:
    c = SynthConfig(seed=seed)
    sim = simulate(c)
    ev, _, _ = synthetic(c.n_users, c.n_items, seed, content=False)
    split = make_split(ev)
    user_of = np.array([int(u[1:]) - 1 for u in ev.users])
    item_of = np.array([int(i[1:]) - 1 for i in ev.items])
    items, users = sim.items, sim.users
    # The latent rating score's cut for ">= 4": the generator cuts at quantiles of all scores.
    n = np.bincount(sim.user, minlength=c.n_users)
    frac = np.concatenate([np.arange(k) / k for k in n])
    aff = users.affinity0[sim.user, sim.item] + frac * users.affinity_drift[sim.user, sim.item]
    mean = users.bias[sim.user] + c.rating_quality_weight * items.quality[sim.item] + c.rating_affinity_weight * aff
    scores = mean + np.random.default_rng(0).normal(0.0, c.rating_noise, len(mean))
    cut = float(np.quantile(scores, np.cumsum(c.rating_probs)[2]))
    static = items.log_base + c.choice_quality_weight * items.quality
    n_items = len(items.release)

    def make(timed: bool = True, personal: bool = True) -> Callable[[I32], F32]:
        def score(rows: I32) -> F32:
            out = np.zeros((len(rows), len(ev.items)), np.float32)
            for k, r in enumerate(rows):
                u = user_of[r]
                if timed:
                    log_exp = log_exposure(c, items, float(split.t_query[r]))
                    out_now = ~np.isfinite(log_exp)
                    log_exp = np.where(out_now, 0.0, log_exp)
                else:
                    out_now, log_exp = np.zeros(n_items, bool), np.zeros(n_items)
                a = users.affinity0[u] + 0.9 * users.affinity_drift[u] if personal else np.zeros(n_items)
                choose = static + log_exp + a / c.choice_temperature
                rated = norm.logsf(
                    (cut - users.bias[u] - c.rating_quality_weight * items.quality - c.rating_affinity_weight * a)
                    / c.rating_noise
                )
                out[k] = np.where(out_now, -np.inf, choose + rated)[item_of]
            return out

        return score

    return split, make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        split, make = oracle(seed)
        for label, kw in [
            ("timed + personal", {}),
            ("untimed + personal", {"timed": False}),
            ("timed, not personal", {"personal": False}),
            ("untimed, not personal", {"timed": False, "personal": False}),
        ]:
            m = evaluate_scores(split, make(**kw))
            rows.append(
                {
                    "seed": seed,
                    "oracle": label,
                    "ndcg@10": round(m.ndcg, 4),
                    "recall@10": round(m.recall, 4),
                    "recall@10_capped": round(m.recall_capped, 4),
                    "users": m.users,
                }
            )
            print(f"seed {seed} {label:24s} NDCG@10 {m.ndcg:.4f} recall@10 {m.recall:.4f}", flush=True)
    report("recs-oracle", rows, {"seeds": args.seeds, "note": "hidden-variable ranking on local.synth_ratings"})
    assert all(math.isfinite(r["ndcg@10"]) for r in rows)


if __name__ == "__main__":
    main()
