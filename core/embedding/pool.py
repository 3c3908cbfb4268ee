"""A pool of embedding processes fed through shared memory: how one GPU gets enough JPEGs.

Inside one process, GPU JPEG decoding does not scale: torchvision's nvjpeg decoder is one object
behind a lock, and its Huffman stage runs on one CPU thread, several times slower than the
ViT-B-32 model itself in fp16 (``bench/README.md`` has the GPU figures). Each worker
process here has its own encoder and CUDA context, so Huffman decoding runs on as many cores as
there are workers and the GPU interleaves their kernels.

Image bytes travel to the workers through one :mod:`multiprocessing.shared_memory` block per call
(a copy, not a pickle per image), and only the vectors come back. On CPU the same pool works but
gains nothing over one process with intra-op threads; it exists for GPUs.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from core.embedding import ImageBatch, ImageRuntime, Matrix
from core.errors import InvalidInput

if TYPE_CHECKING:
    from core.embedding.clip import OpenClipEncoder

log = logging.getLogger(__name__)

_encoder: OpenClipEncoder | None = None


def _init_worker(
    model: str, pretrained: str, device: str, batch_size: int, threads: int, image_runtime: ImageRuntime, cache_dir: str
) -> None:
    global _encoder
    import torch

    from core.embedding.clip import OpenClipEncoder

    torch.set_num_threads(threads)
    _encoder = OpenClipEncoder(
        model,
        pretrained,
        device=device,
        batch_size=batch_size,
        decode_workers=threads,
        image_runtime=image_runtime,
        onnx_cache_dir=Path(cache_dir) if cache_dir else None,
    )


def _read_shared(name: str, lengths: list[int]) -> list[bytes]:
    shm = SharedMemory(name=name)
    # Spawned workers share the parent's resource tracker, which owns the block: the parent unlinks.
    try:
        buf = shm.buf
        assert buf is not None
        out, off = [], 0
        for n in lengths:
            out.append(bytes(buf[off : off + n]))
            off += n
        return out
    finally:
        shm.close()


def _embed_slice(
    payload: tuple[str, list[int]] | list[bytes], index: list[int], max_bytes: int, max_pixels: int
) -> tuple[list[int], Matrix, dict[int, InvalidInput]]:
    """Embed one slice: ``payload`` is a shared block (name, lengths) or the bytes themselves."""
    assert _encoder is not None, "worker not initialised"
    datas = _read_shared(*payload) if isinstance(payload, tuple) else payload
    res = _encoder.embed_image_bytes(datas, max_bytes=max_bytes, max_pixels=max_pixels)
    return [index[i] for i in res.ok], res.vectors, {index[i]: e for i, e in res.errors.items()}


class EmbedPool:
    """``workers`` processes, each with an :class:`OpenClipEncoder` on ``device``.

    ``embed_image_bytes`` splits the inputs into slices of ``slice_size`` images, runs them on the
    workers in parallel and returns one :class:`ImageBatch` in input order, with per-image errors
    (a bad image never fails its neighbours). Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        model: str,
        pretrained: str,
        *,
        device: str = "cuda",
        workers: int = 0,
        batch_size: int = 256,
        slice_size: int = 256,
        threads_per_worker: int = 1,
        image_runtime: ImageRuntime = "torch",
        onnx_cache_dir: str = "",
    ) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self.slice_size = slice_size
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=get_context("spawn"),  # CUDA cannot be used in forked children
            initializer=_init_worker,
            initargs=(model, pretrained, device, batch_size, threads_per_worker, image_runtime, onnx_cache_dir),
        )
        self.dim = 0
        self._use_shm = True

    def warm_up(self, sample: bytes, *, max_bytes: int, max_pixels: int) -> None:
        """Start every worker and load its model (first calls otherwise pay for it)."""
        self.embed_image_bytes([sample] * self.workers, max_bytes=max_bytes, max_pixels=max_pixels, slice_size=1)

    def embed_image_bytes(
        self, datas: Sequence[bytes], *, max_bytes: int, max_pixels: int, slice_size: int = 0
    ) -> ImageBatch:
        size = slice_size or self.slice_size
        ok: list[int] = []
        parts: list[Matrix] = []
        errors: dict[int, InvalidInput] = {}
        # At most two slices per worker in flight: bounded shared memory, workers never idle.
        pending: deque[tuple[Future[Any], SharedMemory | None]] = deque()

        def collect() -> None:
            fut, shm = pending.popleft()
            try:
                good, vecs, errs = fut.result()
            finally:
                if shm is not None:
                    shm.close()
                    shm.unlink()
            ok.extend(good)
            if len(vecs):
                parts.append(vecs)
                self.dim = int(vecs.shape[1])
            errors.update(errs)

        try:
            for start in range(0, len(datas), size):
                chunk = datas[start : start + size]
                shm = self._share(chunk)
                payload: tuple[str, list[int]] | list[bytes] = (
                    (shm.name, [len(d) for d in chunk]) if shm is not None else list(chunk)
                )
                index = list(range(start, start + len(chunk)))
                pending.append((self._pool.submit(_embed_slice, payload, index, max_bytes, max_pixels), shm))
                while len(pending) >= 2 * self.workers:
                    collect()
            while pending:
                collect()
        finally:
            for fut, shm in pending:
                fut.cancel()
                if shm is not None:
                    shm.close()
                    shm.unlink()
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        order = np.argsort(ok, kind="stable")
        return ImageBatch(vectors[order], [ok[i] for i in order], errors)

    def _share(self, chunk: Sequence[bytes]) -> SharedMemory | None:
        """Copy a slice into a new shared block; ``None`` (send by pipe) where shared memory fails."""
        if not self._use_shm:
            return None
        try:
            shm = SharedMemory(create=True, size=max(1, sum(len(d) for d in chunk)))
        except OSError as exc:
            log.warning("shared memory unavailable (%s); sending image bytes through pipes", exc)
            self._use_shm = False
            return None
        buf, off = shm.buf, 0
        assert buf is not None
        for d in chunk:
            buf[off : off + len(d)] = d
            off += len(d)
        return shm

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EmbedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PooledImageEncoder:
    """An in-process encoder for texts and single images, with image bytes sent to an
    :class:`EmbedPool` (bulk indexing). Same vectors, same interface."""

    def __init__(self, local: OpenClipEncoder, pool: EmbedPool) -> None:
        self.local = local
        self.pool = pool
        self.name = local.name
        self.dim = local.dim
        self.random_init = local.random_init

    def embed_images(self, images: Sequence[Image.Image]) -> Matrix:
        return self.local.embed_images(images)

    @property
    def text_runtime(self) -> str:
        return self.local.text_runtime

    @property
    def image_runtime(self) -> str:
        return self.local.image_runtime

    def embed_texts(self, texts: Sequence[str]) -> Matrix:
        return self.local.embed_texts(texts)

    def embed_image_bytes(self, datas: Sequence[bytes], *, max_bytes: int, max_pixels: int) -> ImageBatch:
        if len(datas) < 2:  # one image: not worth a round trip
            return self.local.embed_image_bytes(datas, max_bytes=max_bytes, max_pixels=max_pixels)
        return self.pool.embed_image_bytes(datas, max_bytes=max_bytes, max_pixels=max_pixels)


def start_mps() -> bool:
    """Start the CUDA MPS control daemon when its binary is present (it lets the pool's processes
    share the GPU concurrently instead of time-slicing it, which is what lets more processes
    raise the throughput). Returns whether a daemon is now running."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        return False
    try:
        subprocess.run([exe, "-d"], check=False, timeout=10, capture_output=True)
        probe = subprocess.run([exe], input=b"get_server_list\n", timeout=10, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not start CUDA MPS: %s", exc)
        return False
    return probe.returncode == 0
