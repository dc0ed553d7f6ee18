"""Spectrum stage: singular values of J and its top left singular vectors (information space).

methods        which method a J gets, and the spectrum rule's entry point
dense          on a stored J: the Gram matrix and its eigendecomposition, Dask's randomized SVD
device         the Gram matrix and eigendecomposition on a GPU
matrix_free    the spectrum job of a J too large to store: J's rows streamed, J never stored
operator       J as a linear operator whose products stream J's rows a block at a time
transport      a pass's tasks on dask.distributed workers
randomized     randomized SVD (block Krylov or subspace iteration) from passes over J's rows
streamed_gram  G = J J^T from streamed rows: every singular value of a J too large to store
budget         which matrix-free iteration fits the memory budget, and what it holds
store          the spectrum file every method writes, and its checks
"""
