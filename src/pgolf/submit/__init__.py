"""pgolf.submit: seed sweeps and statistics, run comparisons, the single-file bundle, record folders.

Modules: stats (mean/std, nats<->bpb, record t-tests), sweep (`pgolf sweep`), report (`pgolf compare`),
bundle (train_gpt.py generator, `code_bytes`), record (`pgolf submit`). Nothing heavy is imported here:
packing imports `pgolf.submit.bundle` on every run.
"""
