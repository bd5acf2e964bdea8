"""The comparison: the method registry, the search and its space, result rows, statistics and
tables. Imports from the data, the core and the base, never from the pipeline."""
