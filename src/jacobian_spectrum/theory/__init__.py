"""The paper's two synthetic experiments.

linear   Section 2.1: the linear model of Figure 2
mixture  Section 3.3: the Gaussian mixture and one-hidden-layer network of Figure 4
"""
