"""Analysis stage: what the information and nuisance spaces say about a run.

measure     a run's label and residual energies on I and N, per tracked epoch
quantities  the quantities behind them (projections, cutoff, theorem terms, correlations)
"""
