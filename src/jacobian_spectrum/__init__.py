"""Jacobian spectrum, information and nuisance spaces of neural networks (Oymak et al., arXiv 1906.05392).

Importing the package is light (no torch): the workflow imports it at parse time.
"""

__version__ = "0.1.0"
