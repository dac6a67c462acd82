"""pgolf.optim: Muon, parameter groups, LR/momentum schedules and weight averaging."""
from pgolf.optim.averaging import WeightAverager, make_averager
from pgolf.optim.groups import build_optimizers, classify_params, describe_groups
from pgolf.optim.muon import Muon, zeropower_via_newtonschulz
from pgolf.optim.schedule import Schedule, apply, lr_scale, muon_momentum_at

__all__ = [
    "Muon", "zeropower_via_newtonschulz", "build_optimizers", "classify_params", "describe_groups",
    "Schedule", "apply", "lr_scale", "muon_momentum_at", "WeightAverager", "make_averager",
]
