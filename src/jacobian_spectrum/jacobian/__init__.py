"""Jacobian stage: J = d f(x_i)_k / d theta, one row per (sample, class), in HDF5.

compute  J's rows for a batch of samples (layer-wise kernels, torch.func elsewhere)
probe    each chunk's check against torch.func on a few rows
chunk    the chunk job: one block of samples' rows, checked, in a chunk file
store    the file ``jacobian/{split}_epoch{E}.h5`` and the gather job (no torch)
"""
