"""TopK and BatchTopK SAEs: the sparsity is a number of latents, not a penalty."""

from saezoo import hookimpl
from saezoo_topk.sae import BatchTopKSAE, TopKSAE


@hookimpl
def register_architectures(register):
    register("topk", TopKSAE)
    register("batchtopk", BatchTopKSAE)
