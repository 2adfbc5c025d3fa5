"""Batches drawn in one vectorised selection over in-memory tensors (issue 21, item 1).

Poisson sampling, as DP-SGD's accounting assumes it: at every step each of the ``N`` rows is
included independently with probability ``q``. :class:`PoissonBatches` draws that as ONE
Bernoulli(``q``) mask over all ``N`` rows, ``torch.rand(N, generator=g) < q``, exactly the
draw of Opacus's ``UniformWithReplacementSampler`` (same generator state → same mask, which
``tests/unit/training/test_poisson_loader.py`` checks against Opacus itself). The mask, not a
Binomial count followed by sampled indices, because the mask *is* the definition: the batch
size is then Binomial(``N``, ``q``) and, given its size ``k``, the batch is a uniform ``k``-subset;
drawing ``k ~ Binomial(N, q)`` and then ``k`` rows without replacement gives the same
distribution, but it is a second implementation to get right and it would not reproduce
Opacus's masks draw for draw.

The speed comes from the fetch, not the draw: Opacus's ``DPDataLoader`` keeps the loader's
``TensorDataset`` and fetches a batch row by row through ``__getitem__`` and then stacks the
rows (``default_collate``), about 40 % of a DP epoch of the tabular MLP. :class:`TensorRows`
answers ``__getitems__`` (which torch's ``DataLoader`` calls with the whole index list) with one
indexing of each tensor, and the identity collate passes the pair through.

An empty draw (possible: probability ``(1-q)^N``) yields tensors with a zero-length batch
dimension and the right trailing shape, as Opacus's ``wrap_collate_with_empty`` does; Opacus's
optimizer then adds noise to a zero sum, and the step is taken and charged like any other.

:class:`ShuffledBatches` is the non-private reference's loader: a random permutation cut into
``ceil(N/B)`` batches, fetched the same way, so the DP/non-private ratio compares like with like.

The masks' generator is the trainer's secret sampler generator
(:func:`dpgov.training.trainer.noise_generators`); nothing here seeds or creates one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.gate.noise import NOISE_CSPRNG

if TYPE_CHECKING:  # pragma: no cover
    import torch

MASK_SAMPLING = "Bernoulli(q) mask over all rows per step, one vectorised draw"


def in_memory(x: Any) -> bool:
    """Whether ``x`` is an in-memory array (image files decoded per batch are not)."""
    return getattr(x, "torch_dataset", None) is None


def _as_batch(batch: Any) -> Any:
    """Identity collate: :meth:`TensorRows.__getitems__` already returns the batch."""
    return batch


class TensorRows:
    """``(x, y)`` float32 tensors whose batch fetch is one index operation per tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch

        self.x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> tuple[Any, Any]:
        import torch

        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.x[idx], self.y[idx]


class PoissonBatches:
    """``steps`` batches per pass, each row in each batch independently with probability q.

    Yields the selected row indices (int64 NumPy arrays, ascending) of one Bernoulli(q) mask
    per step drawn from ``generator``; the attributes mirror Opacus's
    ``UniformWithReplacementSampler`` (``num_samples``, ``sample_rate``, ``generator``, ``steps``).
    """

    def __init__(
        self,
        *,
        num_samples: int,
        sample_rate: float,
        steps: int,
        generator: torch.Generator | None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, found {num_samples}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], found {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be positive, found {steps}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def mask(self) -> torch.Tensor:
        """One step's Bernoulli(q) inclusion mask over all rows (Opacus's draw)."""
        import torch

        return torch.rand(self.num_samples, generator=self.generator) < self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.steps):
            yield self.mask().nonzero(as_tuple=False).reshape(-1).numpy()


class ShuffledBatches:
    """One random permutation of the rows per pass, cut into ``ceil(N/B)`` batches."""

    def __init__(
        self, *, num_samples: int, batch_size: int, generator: torch.Generator | None
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need rows and a batch size, found {num_samples} and {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        import torch

        order = torch.randperm(self.num_samples, generator=self.generator).numpy()
        for start in range(0, self.num_samples, self.batch_size):
            yield order[start : start + self.batch_size]


@functools.cache
def loader_class() -> type:
    """The ``DataLoader`` subclass :func:`poisson_loader` returns (made once, torch lazily)."""
    from torch.utils.data import DataLoader

    class PoissonLoader(DataLoader):  # type: ignore[type-arg]
        """A ``DataLoader`` over :class:`PoissonBatches` with Opacus's ``sample_rate``."""

        sample_rate: float

    return PoissonLoader


def fits_opacus(*, sample_rate: float, steps: int) -> bool:
    """Whether Opacus, given a loader of ``steps`` batches, charges exactly ``sample_rate``.

    ``make_private`` takes ``q = 1/len(loader)``; a plan whose ``int(1/q)`` truncated below
    ``1/q`` (``q = 1/93`` gives 92 steps in float arithmetic) cannot be expressed this way.
    """
    return steps >= 1 and 1.0 / steps == sample_rate


def usable(x: Any, noise_source: str, sample_rate: float, steps: int) -> bool:
    """Whether the DP path can use :func:`poisson_loader`: rows in memory, the sampler's
    generator dpgov's own (not secure mode's, which Opacus installs in its own loader), and
    ``q = 1/steps`` exactly (:func:`fits_opacus`); else Opacus's ``DPDataLoader`` runs."""
    return (
        in_memory(x)
        and noise_source != NOISE_CSPRNG
        and fits_opacus(sample_rate=sample_rate, steps=steps)
    )


def poisson_loader(
    x: np.ndarray,
    y: np.ndarray,
    *,
    sample_rate: float,
    steps: int,
    generator: torch.Generator | None,
) -> Any:
    """A loader of ``steps`` Poisson batches per pass over ``(x, y)`` held in memory.

    Hand it to Opacus's ``make_private(..., poisson_sampling=False)``: Opacus then keeps it
    as it is and derives ``q = 1/len(loader)`` and the expected batch size ``N·q`` from it,
    so ``steps`` must be ``1/sample_rate`` (:func:`dpgov.training.trainer.sampling_plan`).
    """
    if not fits_opacus(sample_rate=sample_rate, steps=steps):
        raise ValueError(
            f"Opacus charges q = 1/len(loader): steps {steps} must be 1/q for q={sample_rate}"
        )
    rows = TensorRows(x, y)
    loader = loader_class()(
        rows,  # type: ignore[arg-type]
        batch_sampler=PoissonBatches(
            num_samples=len(rows), sample_rate=sample_rate, steps=steps, generator=generator
        ),
        collate_fn=_as_batch,
        # as Opacus's DPDataLoader: each pass's iterator draws its base seed from the loader's
        # generator (draw-for-draw the same stream; with none it would take the global one's)
        generator=generator,
    )
    loader.sample_rate = sample_rate
    return loader


def shuffled_loader(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, generator: torch.Generator | None
) -> Any:
    """The non-private reference's loader: shuffled batches, fetched like the DP ones."""
    from torch.utils.data import DataLoader

    rows = TensorRows(x, y)
    batches: Any = ShuffledBatches(
        num_samples=len(rows), batch_size=batch_size, generator=generator
    )
    return DataLoader(
        rows,  # type: ignore[arg-type]
        batch_sampler=batches,
        collate_fn=_as_batch,
        generator=generator,
    )
