"""What every stage shares.

h5io         HDF5 files written atomically with provenance, and opened checked
logs         a job's log file
device       picking the torch device
plugins      ``package.module:name`` references to a researcher's own code
codeversion  the hash of the code a workflow script runs (the rules' rerun trigger)
errors       the config's error (ConfigError)
"""
