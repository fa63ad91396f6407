r"""Simulations on disk, one file per chunk, so that a run killed at any point
loses only the chunks in flight and a rerun simulates only what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["SimulationStore"]

_MANIFEST = "manifest.json"
_THETA = "theta.pt"


def _atomic_save(obj: object, path: Path) -> None:
    r"""`torch.save` to a temporary file of the same folder, then a rename: a
    reader sees the whole file or none (`os.replace` is atomic on POSIX and
    Windows)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _digest(theta: Tensor) -> str:
    return hashlib.sha256(theta.contiguous().numpy().tobytes()).hexdigest()


class SimulationStore:
    r"""A folder of one simulation run: its parameters, its settings and one
    file per finished chunk, each written whole or not at all.

    :func:`~sbi_alfi.simulation.simulate` writes a chunk as soon as it is done
    and, given the same store again, simulates only the chunks it lacks; the
    store refuses a run whose parameters, chunk size or seed differ from its
    own, so chunks of two runs never mix.

    Arguments:
        path: The folder (created when needed).

    Example:
        >>> import tempfile, torch
        >>> from sbi_alfi.simulation import SimulationStore, simulate
        >>> store = SimulationStore(tempfile.mkdtemp())
        >>> theta = torch.rand(10, 2)
        >>> _ = simulate(lambda t: t + 1, theta, chunk_size=4, store=store,
        ...              seed=0, show_progress_bar=False)
        >>> theta_, x = store.load()
        >>> x.shape, store.missing()
        (torch.Size([10, 2]), [])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SimulationStore({str(self.path)!r})"

    def _chunk(self, index: int) -> Path:
        return self.path / f"chunk-{index:06d}.pt"

    @property
    def manifest(self) -> dict | None:
        r"""The run's settings, `None` before :meth:`open`."""
        path = self.path / _MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def open(self, theta: Tensor, chunk_size: int, seed: int) -> None:
        r"""Binds the store to a run: writes its parameters and settings, or
        checks that they are those already there.

        Raises:
            ValueError: The store holds another run.
        """
        theta = theta.detach().cpu()
        manifest = {
            "num_simulations": len(theta),
            "theta_shape": list(theta.shape),
            "theta_sha256": _digest(theta),
            "chunk_size": chunk_size,
            "num_chunks": -(-len(theta) // chunk_size),
            "seed": seed,
        }
        old = self.manifest
        if old is not None:
            different = [k for k, v in manifest.items() if old.get(k) != v]
            if different:
                raise ValueError(
                    f"The store at {self.path} holds another run (its "
                    f"{', '.join(different)} differ): pass the same theta, "
                    "chunk_size and seed to resume it, or another folder."
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_save(theta, self.path / _THETA)
        # The manifest last: a store with one has its theta.
        tmp = self.path / f".{_MANIFEST}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.path / _MANIFEST)

    def _settings(self) -> dict:
        manifest = self.manifest
        if manifest is None:
            raise ValueError(f"The store at {self.path} holds no run yet.")
        return manifest

    def finished(self) -> list[int]:
        r"""The indices of the chunks on disk."""
        num_chunks = self._settings()["num_chunks"]
        return [i for i in range(num_chunks) if self._chunk(i).exists()]

    def missing(self) -> list[int]:
        r"""The indices of the chunks not yet on disk."""
        done = set(self.finished())
        return [i for i in range(self._settings()["num_chunks"]) if i not in done]

    def write(self, index: int, x: Tensor) -> None:
        r"""Writes chunk `index`'s simulations, atomically."""
        _atomic_save(x.detach().cpu(), self._chunk(index))

    def read(self, indices: Iterable[int]) -> list[Tensor]:
        r"""The simulations of the chunks `indices`."""
        return [torch.load(self._chunk(i), weights_only=True) for i in indices]

    def load(self) -> tuple[Tensor, Tensor]:
        r"""`(theta, x)` of the whole run, ready for `append_simulations`; NaN
        or inf rows included (:func:`~sbi_alfi.simulation.simulate` drops or
        reports them).

        Raises:
            ValueError: Chunks are missing; the message says how many.
        """
        settings = self._settings()
        missing = self.missing()
        if missing:
            raise ValueError(
                f"The store at {self.path} lacks {len(missing)} of its "
                f"{settings['num_chunks']} chunks (the first: {missing[:5]}): rerun "
                "`simulate` with this store to simulate only those."
            )
        theta = torch.load(self.path / _THETA, weights_only=True)
        return theta, torch.cat(self.read(range(settings["num_chunks"])))
