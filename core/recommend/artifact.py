"""Trained models in the bucket: ``models/recommender/<id>.npz`` plus a ``latest.json`` pointer.

The pointer is written after the model file, so a reader that sees a pointer always finds the
file it names. Old model files are kept (a few) so a reader mid-download never loses its file.

The arrays in the file keep their short names (``b``: :attr:`HybridModel.ease`, ``v``:
``subspace``, ``f_*``: ``choice``): they are the file format, and saved models must stay readable.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from core.errors import NotFound
from core.recommend.data import F32
from core.recommend.factors import FactorModel
from core.recommend.hybrid import HybridModel, HybridParams, Reranker
from core.storage import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "models/recommender/"
LATEST = PREFIX + "latest.json"
KEEP = 5


def to_bytes(model: HybridModel) -> bytes:
    arrays: dict[str, Any] = {
        "items": np.array(model.items, dtype=str),
        "meta": np.array(
            json.dumps(
                {
                    "params": model.params.as_dict(),
                    "info": model.info,
                    "reranker": None if model.reranker is None else model.reranker.as_dict(),
                }
            )
        ),
    }
    for name, m in (("b", model.ease),):  # "b", "v", "f_*": the file format, see the module docstring
        m = sp.csr_matrix(m)
        arrays[f"{name}_data"] = m.data.astype(np.float32)
        arrays[f"{name}_indices"] = m.indices
        arrays[f"{name}_indptr"] = m.indptr
        arrays[f"{name}_shape"] = np.array(m.shape)
    if model.subspace is not None:
        arrays["v"] = np.asarray(model.subspace, dtype=np.float32)
    f = model.choice
    if f is not None:
        arrays.update(
            f_users=np.array(f.users, dtype=str),
            f_p=f.p,
            f_user_bias=f.user_bias,
            f_q=f.q,
            f_choice_bias=f.choice_bias,
            f_item_bias=f.item_bias,
            f_scalars=np.array([f.mean, f.scale, f.tau_days, f.like_at], dtype=np.float64),
        )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _csr(z: Any, name: str) -> sp.csr_matrix | None:
    if f"{name}_data" not in z:
        return None
    shape = tuple(int(x) for x in z[f"{name}_shape"])
    return sp.csr_matrix((z[f"{name}_data"], z[f"{name}_indices"], z[f"{name}_indptr"]), shape=shape)


def from_bytes(data: bytes) -> HybridModel:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        params = HybridParams.from_dict(meta["params"])
        raw = meta.get("reranker")  # absent in models trained before the reranker
        reranker = None
        if raw is not None:
            try:
                reranker = Reranker.from_dict(raw)
            except ValueError as exc:  # trained by another version: serve the blend alone
                log.warning("model reranker ignored: %s", exc)
        items = [str(i) for i in z["items"]]
        subspace = np.asarray(z["v"], dtype=np.float32) if "v" in z else None  # absent before the projection
        return HybridModel(items, _csr(z, "b"), params, meta["info"], reranker, subspace, _factors(z))


def _factors(z: Any) -> FactorModel | None:
    """The choice model, absent from models trained before it (or with ``eta = 0``)."""
    if "f_p" not in z:
        return None
    mean, scale, tau_days, like_at = (float(x) for x in z["f_scalars"])

    def arr(name: str) -> F32:
        out: F32 = np.asarray(z[f"f_{name}"], dtype=np.float32)
        return out

    users = [str(u) for u in z["f_users"]]
    p, ub, q, c, ib = (arr(k) for k in ("p", "user_bias", "q", "choice_bias", "item_bias"))
    return FactorModel(users, p, ub, q, c, ib, mean, scale, tau_days, like_at)


class ModelStore:
    """Saves and loads the recommendation model in the bucket."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def save(self, model: HybridModel) -> str:
        trained_at = datetime.now(UTC)
        key = f"{PREFIX}model-{trained_at.strftime('%Y%m%dT%H%M%S%fZ')}.npz"
        self.store.put_bytes(key, to_bytes(model))
        pointer = {
            "key": key,
            "trained_at": trained_at.isoformat(),
            "params": model.params.as_dict(),
            "info": model.info,
        }
        self.store.put_bytes(LATEST, json.dumps(pointer).encode(), "application/json")
        old = sorted(o.key for o in self.store.list(PREFIX) if o.key.endswith(".npz") and o.key != key)
        for stale in old[:-KEEP] if len(old) > KEEP else []:
            self.store.delete(stale)
        return key

    def latest(self) -> dict[str, Any] | None:
        """The pointer of the newest model, or None before the first training."""
        try:
            data = self.store.get_bytes(LATEST, max_bytes=1 << 20)
        except NotFound:
            return None
        pointer: dict[str, Any] = json.loads(data)
        return pointer

    def load_if_changed(self, current_key: str | None) -> tuple[str, HybridModel] | None:
        """The newest model when it differs from ``current_key``; None when unchanged or none."""
        pointer = self.latest()
        if pointer is None or pointer["key"] == current_key:
            return None
        return pointer["key"], from_bytes(self.store.get_bytes(pointer["key"]))
