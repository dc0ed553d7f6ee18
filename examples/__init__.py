"""Your own network and data set through the workflow: docs/own.md."""
