"""pgolf.train: the training loop (trainer), torchrun set-up (dist), checkpoints and run logs.

Entry point: `pgolf.train.trainer.train(cfg, data_dir, out_dir, resume=False, progress=True)`.
"""
