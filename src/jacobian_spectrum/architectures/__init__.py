"""The architecture table (beyond the paper): the workflow run once per network on the same data
and runs (``architectures:`` in the config), and the Jacobian's structure compared across them.

:mod:`.configs` makes each network's config; :mod:`.table` reads their artifacts into the table
and the figure.
"""
