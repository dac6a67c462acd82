"""pgolf.eval: the scoring harness (scorer), plans, the registry of methods (methods) and the methods
themselves (windowed, ttt_sgd, ttt_lora, phased), the black-box audit, and models from artifacts."""
