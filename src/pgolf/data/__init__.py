"""Data pipeline: shards, tokenizers, corpus building, the published export, training loaders."""
