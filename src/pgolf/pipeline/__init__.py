"""pgolf.pipeline: orchestration. The run directory (rundir), data preparation (data_prep), the main
job (job), packing a run (packing), evaluating and auditing runs and artifacts (evaluation), sweeps and
record folders (reports), the record's single-file entry (script), and the CLI commands' handlers."""
