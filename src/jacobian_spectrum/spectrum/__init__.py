"""Spectrum stage: singular values of J and its top left singular vectors (information space).

methods      which method a J gets, and the spectrum rule's entry point
dense        on a stored J: the Gram matrix and its eigendecomposition, Dask's randomized SVD
device       the Gram matrix and eigendecomposition on a GPU
matrix_free  top-k without storing J: a randomized SVD by passes over J's rows
store        the spectrum file every method writes, and its checks
"""
