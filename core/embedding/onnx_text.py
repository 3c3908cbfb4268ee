"""ONNX Runtime for the text towers on CPU.

A single search query runs both text towers (CLIP's and the sentence encoder) on a handful of
tokens. PyTorch's eager kernels are slow at that shape on a small CPU; ONNX Runtime runs the same
fp32 weights several times faster (`bench/README.md`, the query-path table, has the figures).

The graph is exported from the loaded PyTorch module once (``torch.onnx.export``, dynamic batch
and length) and cached on disk under a key made of the weights' digest and the exporter's
versions, so every process with the same weights reuses it. Before it is used, the exported
graph is checked against PyTorch on probe texts (cosine >= :data:`MIN_COSINE`); any failure keeps
PyTorch (``TEXT_RUNTIME=auto``) or raises (``TEXT_RUNTIME=onnx``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.embedding import Matrix, TextRuntime
from core.errors import ModelLoadError
from core.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
"""Bump when the exported graphs change, so stale cache entries are not reused."""

MAX_BATCH = 8
"""ONNX Runtime takes batches up to this many texts (queries). Bigger batches (indexing) go to
PyTorch, whose GEMMs are as fast at that size, so the exported copy only serves where it wins."""

MIN_COSINE = 0.9999
"""The exported graph must agree with PyTorch at least this well on every probe text."""

MIN_COSINE_INT8 = 0.99
"""The int8 copy (CLIP's text tower only) must agree with PyTorch fp32 at least this well on every
probe text: the bar the int8 image tower and the GPU fp16 path are held to."""

TEXT_KEEP_FP32: tuple[str, ...] = ()
"""Weights of CLIP's text tower that its int8 copy keeps fp32: none. Unlike the image tower
(:data:`core.embedding.onnx_image.KEEP_FP32`), quantising the attention input projections too
keeps the text tower's agreement with fp32 far above :data:`MIN_COSINE_INT8` on the CPUs
measured, and at a query's few tokens those fp32 weights (a quarter of the tower's, at four times
the bytes) took about a third of its time (``bench.query_encode``). Where that copy misses the
bar (CPUs without int8 dot-product instructions quantise less exactly), the image tower's recipe
is tried next."""

PROBES = (
    "blue running shoes",
    "KS-48213 Virzan 7 trail runner, size 44",
    "a",
    "wireless noise cancelling over-ear headphones with a 30 hour battery for long flights and trains",
    "KS-48213",
    "red",
    "wool beanie",
    "gift for dad under 50",
)


def default_cache_dir() -> Path:
    """Where exported models go when no ``MODEL_CACHE_DIR`` is given (the settings say)."""
    return Path(Settings.default_model_cache_dir())


def wanted(runtime: TextRuntime, device: str) -> bool:
    """Whether to try ONNX Runtime: ``auto`` means on CPU only (GPUs run fp16 PyTorch)."""
    return runtime in ("onnx", "int8") or (runtime == "auto" and device == "cpu")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def query_threads(tower: Literal["clip", "sentence"]) -> int:
    """Intra-op threads of a text tower's ONNX session (``tower``: ``clip`` or ``sentence``).

    A query batch runs the two towers side by side (:class:`core.embedding.batcher.QueryEncoder`),
    so they split the cores instead of each taking all of them: CLIP's (the bigger) gets half,
    MiniLM the rest. At a query's shape an extra intra-op thread buys little time for much more
    CPU (``bench.query_encode`` measures both), and a busy process has other requests to run on
    the other cores."""
    import torch

    cores = max(1, torch.get_num_threads())
    clip = max(1, cores // 2)
    return clip if tower == "clip" else max(1, cores - clip)


def cpu_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads and no
    busy-waiting between runs: on a small CPU spinning threads would take cores from the search,
    HTTP and the other models."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxText:
    """One exported text tower in an ONNX Runtime session (``precision``: ``onnx`` = the fp32
    graph, ``int8`` = its dynamically quantised copy). Thread-safe: sessions allow concurrent
    ``run`` calls. Outputs are L2-normalised rows."""

    def __init__(self, path: Path, *, threads: int, precision: str = "onnx") -> None:
        self.path = path
        self.precision = precision
        self._session = cpu_session(path, threads)
        self.inputs = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: Mapping[str, np.ndarray[Any, Any]]) -> Matrix:
        out = self._session.run(None, {k: np.ascontiguousarray(feeds[k], dtype=np.int64) for k in self.inputs})
        return np.asarray(out[0], dtype=np.float32)


def export_cached(
    *,
    kind: str,
    name: str,
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    max_len: int,
    cache_dir: Path,
    dynamic_length: bool = True,
    label: str = "text model",
) -> Path:
    """The cached ONNX file for ``module`` (exported now when missing). Every input is
    ``[batch, length]`` int64 with both dimensions dynamic, or (``dynamic_length=False``, images)
    any tensor whose first dimension, the batch, is the only dynamic one."""
    import torch

    key = hashlib.sha256(
        f"{kind}|{name}|{EXPORT_VERSION}|torch {torch.__version__}|{weights_digest(module)}".encode()
    ).hexdigest()[:24]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[-60:]
    path = cache_dir / f"{kind}-{safe}-{key}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims: dict[int, Any] = {0: batch}
    if dynamic_length:
        dims[1] = torch.export.Dim("length", min=2, max=max_len)
    shapes: tuple[Any, ...] = tuple(dict(dims) for _ in example)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        shapes = (shapes,)  # torch.export sees `*tensors` as one input
    log.warning("exporting the %s %s %s to ONNX Runtime (once; cached in %s)", kind, label, name, cache_dir)
    started = time.monotonic()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(tmp),
                input_names=list(input_names),
                output_names=["vectors"],
                dynamic_shapes=shapes,
                dynamo=True,
                optimize=False,  # ONNX Runtime optimises the graph itself when it loads it
                external_data=False,
                verbose=False,
            )
        os.replace(tmp, path)  # atomic: concurrent exporters each write their own tmp file
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s in %.1f s (%.0f MB)", path.name, time.monotonic() - started, path.stat().st_size / 1e6)
    return path


def verify(runner: OnnxText, feeds: Callable[[Sequence[str]], dict[str, Any]], reference: Matrix) -> float:
    """Lowest cosine between the ONNX vectors and ``reference`` on :data:`PROBES`, one by one and
    as a padded batch."""
    batch = runner.run(feeds(PROBES))
    single = np.concatenate([runner.run(feeds([p])) for p in PROBES])
    return float(min((batch * reference).sum(axis=1).min(), (single * reference).sum(axis=1).min()))


def load_checked(
    *,
    runtime: TextRuntime,
    kind: str,
    name: str,
    build: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[str], int]],
    feeds: Callable[[Sequence[str]], dict[str, Any]],
    reference: Callable[[Sequence[str]], Matrix],
    cache_dir: Path | None,
    threads: int,
    int8: bool = False,
) -> OnnxText | None:
    """Export (or reuse), load and verify one text tower. ``None`` means: use PyTorch. With
    ``runtime="onnx"`` (or ``"int8"``) a failure raises :class:`ModelLoadError` instead.

    ``int8`` (CLIP's text tower): under ``auto`` or ``int8`` an int8 copy of the fp32 graph (made
    once, cached next to it) replaces it when it agrees with PyTorch at :data:`MIN_COSINE_INT8`:
    the copy with every MatMul weight quantised (:data:`TEXT_KEEP_FP32`), else the one with the attention
    input projections in fp32. Under ``auto`` two failing copies leave the fp32 graph in use,
    under ``int8`` they raise."""

    def onnx_failed(exc: Exception) -> None:
        if runtime in ("onnx", "int8"):
            raise ModelLoadError(
                f"TEXT_RUNTIME={runtime}: cannot run the {kind} text model {name} on ONNX: {exc}"
            ) from exc
        log.warning("%s text model %s stays on PyTorch: ONNX Runtime path failed: %s", kind, name, exc)

    try:
        module, example, input_names, max_len = build()
        path = export_cached(
            kind=kind,
            name=name,
            module=module,
            example=example,
            input_names=input_names,
            max_len=max_len,
            cache_dir=cache_dir or default_cache_dir(),
        )
        wanted_vectors = reference(PROBES)
    except Exception as exc:  # exporter errors come in many types
        onnx_failed(exc)
        return None
    if int8 and runtime in ("auto", "int8"):
        # Tried first: when one passes, the fp32 graph is never loaded in this process.
        from core.embedding.onnx_image import KEEP_FP32, quantized

        failed: list[str] = []
        for keep in dict.fromkeys((TEXT_KEEP_FP32, KEEP_FP32)):  # the faster recipe first
            try:
                small = OnnxText(quantized(path, keep), threads=threads, precision="int8")
                cos8 = verify(small, feeds, wanted_vectors)
                if cos8 < MIN_COSINE_INT8:
                    raise ModelLoadError(
                        f"int8 copy {small.path.name} disagrees with PyTorch (cosine {cos8:.4f} < {MIN_COSINE_INT8})"
                    )
            except Exception as exc:  # quantiser/runtime errors come in many types
                failed.append(str(exc))
                continue
            weights = "every MatMul weight int8" if keep == TEXT_KEEP_FP32 else "attention input projections fp32"
            log.info(
                "%s text model %s runs on ONNX Runtime, int8 (%s; min probe cosine %.7f)", kind, name, weights, cos8
            )
            return small
        if runtime == "int8":
            raise ModelLoadError(f"TEXT_RUNTIME=int8: {kind} text model {name}: {'; '.join(failed)}")
        log.warning("%s text model %s: int8 copy not used, fp32 ONNX instead: %s", kind, name, "; ".join(failed))
    try:
        runner = OnnxText(path, threads=threads)
        cosine = verify(runner, feeds, wanted_vectors)
        if cosine < MIN_COSINE:
            raise ModelLoadError(f"exported graph disagrees with PyTorch (cosine {cosine:.6f} < {MIN_COSINE})")
    except Exception as exc:  # runtime errors come in many types
        onnx_failed(exc)
        return None
    log.info("%s text model %s runs on ONNX Runtime (min probe cosine %.7f)", kind, name, cosine)
    return runner
