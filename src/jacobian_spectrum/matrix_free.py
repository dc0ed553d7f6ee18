"""Matrix-free top-k spectrum: randomized SVD of J driven by JVP/VJP passes, J never stored.

For J too large to store (full CIFAR-10, 10 classes: 500k x 270k, a 2 TB Gram matrix), the
products J X (p x l -> nK x l) and J^T Y (nK x l -> p x l) are computed batch by batch over
the samples with ``torch.func.jvp`` / ``vjp`` (vmapped over the l probe columns); each product
is one pass over the data, its batches Dask tasks. Randomized SVD (Halko, Martinsson, Tropp
2011, Algorithm 4.4 with QR between power iterations):

  Y = J Omega;  repeat q times: Q = qr(Y), Z = J^T Q, Q' = qr(Z), Y = J Q';  Q = qr(Y);
  B^T = J^T Q;  B = U_B S V_B^T;  U = Q U_B

costs 2q + 2 passes; all products run in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp, vmap

from .jacobian import ROW_ORDER, batch_slices, split_params
from .logs import logger
from .spectrum import Spectrum, spectrum_checks, stored_vector_count, write_spectrum


@dataclass
class JacobianOperator:
    """J of a model on samples x (rows sample-major), applied without forming it."""

    model: torch.nn.Module
    x: torch.Tensor
    batch_size: int = 256
    passes: int = 0

    def __post_init__(self) -> None:
        self.params, self.buffers = split_params(self.model)
        self.names = list(self.params)
        self.sizes = [p.numel() for p in self.params.values()]
        self.k = int(self.model(self.x[:1]).shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.x) * self.k, sum(self.sizes)

    def _f(self, xb: torch.Tensor):
        return lambda p: functional_call(self.model, (p, self.buffers), (xb,))

    def _unflatten(self, v: torch.Tensor) -> dict:
        out, off = {}, 0
        for n, s in zip(self.names, self.sizes):
            out[n] = v[off : off + s].reshape(self.params[n].shape)
            off += s
        return out

    def _batches(self):
        return [(b.start, self.x[b]) for b in batch_slices(len(self.x), self.batch_size)]

    def _jv_batch(self, xb: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        f = self._f(xb)
        one = lambda col: jvp(f, (self.params,), (self._unflatten(col),))[1].reshape(-1)  # noqa: E731
        return vmap(one, in_dims=1, out_dims=1)(X)

    def _jtu_batch(self, xb: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        out, pullback = vjp(self._f(xb), self.params)

        def one(col: torch.Tensor) -> torch.Tensor:
            (g,) = pullback(col.reshape(out.shape))
            return torch.cat([g[n].reshape(-1) for n in self.names])

        return vmap(one, in_dims=1, out_dims=1)(Y)

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """J X for X (p x l): one pass over the data, a Dask task per batch of samples."""
        import dask

        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(self.x.dtype)
        tasks = [dask.delayed(self._jv_batch)(xb, Xt) for _, xb in self._batches()]
        blocks = _compute(tasks)
        self.passes += 1
        return torch.cat(blocks).detach().numpy()

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        """J^T Y for Y (nK x l): one pass, the batches' contributions summed."""
        import dask

        Yt = torch.from_numpy(np.ascontiguousarray(Y)).to(self.x.dtype)
        tasks = [
            dask.delayed(self._jtu_batch)(xb, Yt[i * self.k : (i + len(xb)) * self.k]) for i, xb in self._batches()
        ]
        parts = _compute(tasks)
        self.passes += 1
        return torch.stack(parts).sum(0).detach().numpy()


def _compute(tasks: list) -> tuple:
    """Run the per-batch tasks of one pass.

    torch.func transforms keep process-global state (forward-AD levels, vmap interpreters):
    tasks must not share a process concurrently, so locally they run one after the other
    (each uses torch's intra-op threads); with a dask.distributed client active they go to
    the worker processes.
    """
    import dask

    try:
        from dask.distributed import default_client

        default_client()
        return dask.compute(*tasks)
    except (ImportError, ValueError):
        return dask.compute(*tasks, scheduler="synchronous")


def randomized_svd(
    op: JacobianOperator, k: int, oversampling: int = 20, power_iterations: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k singular values and left singular vectors of the operator's J."""
    rows, cols = op.shape
    ell = min(k + oversampling, rows, cols)
    rng = np.random.default_rng(seed)
    Y = op.matmat(rng.standard_normal((cols, ell)))
    for _ in range(power_iterations):
        Q, _ = np.linalg.qr(Y)
        Z, _ = np.linalg.qr(op.rmatmat(Q))
        Y = op.matmat(Z)
    Q, _ = np.linalg.qr(Y)
    Bt = op.rmatmat(Q)  # (p x l) = (Q^T J)^T
    Ub, s, _ = np.linalg.svd(Bt.T, full_matrices=False)
    k = min(k, ell)
    return s[:k], (Q @ Ub)[:, :k]


def matrix_free_spectrum(
    checkpoint: str,
    subset_path: str,
    split: str,
    info_dim: int,
    k: int,
    oversampling: int,
    power_iterations: int,
    threads: int = 1,
    batch_size: int = 256,
    keep: int | None = None,
) -> Spectrum:
    """Spectrum of J(checkpoint) on ``split`` without storing J; checked by two more passes."""
    from .data import read_split
    from .models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model = model.double().eval()
    data = read_split(subset_path, split)
    torch.set_num_threads(max(1, threads))
    op = JacobianOperator(model, torch.from_numpy(data.x).double(), batch_size)
    t0 = time.perf_counter()
    s, U = randomized_svd(op, k, oversampling, power_iterations)
    t1 = time.perf_counter()
    JtU = op.rmatmat(U[:, : min(10, info_dim)])
    checks = spectrum_checks(s, U[:, :info_dim], op.matmat(JtU), np.linalg.norm(JtU, axis=0))
    checks["passes"] = op.passes
    keep = info_dim if keep is None else min(keep, U.shape[1])  # the stored vectors (spectrum.stored_vectors)
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, %d passes, %.1fs", checkpoint, split, *op.shape, op.passes, t1 - t0
    )
    return Spectrum(
        s, U[:, :keep].copy(), "matrix_free", checks, {"matrix_free": t1 - t0, "verify": time.perf_counter() - t1}
    )


def spectrum_matrix_free(
    checkpoint: str, subset_path: str, split: str, out_path: str, settings: dict, threads: int = 1
) -> Spectrum:
    """The matrix-free spectrum rule: compute and write ``spectrum/{split}_epoch{E}.h5``."""
    from .models import read_checkpoint

    spec = matrix_free_spectrum(
        checkpoint,
        subset_path,
        split,
        settings["info_dim"],
        settings["topk"],
        settings["oversampling"],
        settings["power_iterations"],
        threads,
        keep=stored_vector_count(settings, settings["topk"]),
    )
    payload = read_checkpoint(checkpoint)
    source = {
        "split": split,
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": payload["epoch"],
        "dtype": "float64",
        "row_order": ROW_ORDER,
    }
    write_spectrum(out_path, spec, settings["info_dim"], f"matrix-free J of {checkpoint} on {split}", source, settings)
    return spec
