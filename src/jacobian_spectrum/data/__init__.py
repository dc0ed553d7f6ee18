"""Data stage: ``results/data/subset.h5`` and ``labels_noise{level}.h5``.

base        the splits, the error and the parse-time summary every reader shares
sources     the data sets (digits, CIFAR-10, image folders, MNIST, a researcher's loader)
archive     image-folder archives, checked and unpacked
subset      the seeded class-balanced subset, and reading it back normalised
corruption  label corruption and the one-hot targets
"""
