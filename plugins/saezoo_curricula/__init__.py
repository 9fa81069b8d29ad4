"""Curriculum strategies: schedules of the knobs an SAE or the trainer applies per step."""

from saezoo import hookimpl
from saezoo_curricula.schedules import Constant, KAnneal, SparsityWarmup, TierUnlock
from saezoo_curricula.target_l0 import TargetL0


@hookimpl
def register_curricula(register):
    register("constant", Constant)
    register("sparsity-warmup", SparsityWarmup)
    register("tier-unlock", TierUnlock)
    register("k-anneal", KAnneal)
    register("target-l0", TargetL0)
