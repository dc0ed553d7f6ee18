"""Jacobian stage: J = d f(x_i)_k / d theta, one row per (sample, class), in HDF5.

compute  J's rows for a batch of samples (layer-wise kernels, torch.func elsewhere)
probe    each chunk's check against torch.func on a few rows
store    the chunk and gather jobs and the file ``jacobian/{split}_epoch{E}.h5``
"""
