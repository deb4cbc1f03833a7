"""Public data model: job specs, cluster specs, statuses, and the file loader."""
