"""pgolf.train: the training loop (trainer) and resumable checkpoints (checkpoint).

Entry point: `pgolf.train.trainer.train(cfg, data, outputs, proc)`; the pipeline chooses the paths.
"""
