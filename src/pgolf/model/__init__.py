"""pgolf.model: the GPT (gpt) and its parts (layers, attention, mlp, embed), weights without pickle
(weights) and the registry of model switches (switches)."""
