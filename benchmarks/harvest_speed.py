"""Harvest throughput against a plain forward pass of the same model truncated at the hook.

    python benchmarks/harvest_speed.py                    # SmolLM2-135M, layer 15, python-docs
    python benchmarks/harvest_speed.py --tokens 2048 --model path/to/model
    python benchmarks/harvest_speed.py --dtype float32   # default auto: bf16 where the CPU has it

Both runs push the same contexts through the model; the harvest also tokenises, packs, masks,
filters outliers, writes cache shards and draws a progress bar. Rates are context positions per
second (every position is computed, text or not), by wall clock and by this process's CPU time
(which is steadier on a shared machine). Target: harvest >= 85 % of the plain forward pass.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from saezoo.activations import text  # noqa: E402
from saezoo.activations.model import find_blocks, load_model, resolve_hook, resolve_model_dtype  # noqa: E402
from saezoo.activations.model_source import ModelSource  # noqa: E402


def truncated_forward_rate(model: nn.Module, hook: str, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Positions per second (wall, CPU) of the base model with the blocks above ``hook`` removed."""
    prefix, blocks = find_blocks(model)
    layer = int(hook.rsplit(".", 1)[1])
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    name = prefix.rsplit(".", 1)[-1]
    setattr(parent, name, nn.ModuleList(blocks[: layer + 1]))
    try:
        with torch.inference_mode():
            model.base_model(batches[0], use_cache=False)  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            for ids in batches:
                model.base_model(ids, use_cache=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        setattr(parent, name, blocks)
    positions = sum(ids.numel() for ids in batches)
    return positions / wall, positions / cpu


def harvest_rate(args: argparse.Namespace, model: nn.Module, tokenizer, cache_dir: str) -> tuple[float, float, dict]:
    """Positions per second (wall, CPU) of a cache harvest of ``args.tokens`` activations."""
    source = ModelSource(args.model, hook=args.hook, dataset=args.dataset, n_tokens=args.tokens, cache_dir=cache_dir,
                         harvest_batch_size=args.batch, context_length=args.context_length, model_dtype=args.dtype)
    source._model, source._tokenizer = model, tokenizer  # share the loaded model: time the harvest only
    cpu = time.process_time()
    info = source.info
    cpu = time.process_time() - cpu
    return info["positions"] / info["seconds"], info["positions"] / cpu, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hook", default=None)
    parser.add_argument("--dataset", default="python-docs")
    parser.add_argument("--tokens", type=int, default=4096, help="activations to harvest")
    parser.add_argument("--batch", type=int, default=16, help="contexts per forward pass")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, float32 or bfloat16")
    args = parser.parse_args()

    t = time.perf_counter()
    dtype = resolve_model_dtype(args.dtype, "cpu")
    model, tokenizer = load_model(args.model, dtype=dtype)
    load_s = time.perf_counter() - t
    hook = resolve_hook(model, args.hook)
    with tempfile.TemporaryDirectory() as cache_dir:
        # The plain pass runs on the same contexts the harvest will run on.
        h_wall, h_cpu, info = harvest_rate(args, model, tokenizer, cache_dir)
        contexts = text.pack_contexts(text.split_documents(text.iter_documents(args.dataset), "train"), tokenizer,
                                      args.context_length)
        n_batches = -(-info["positions"] // (args.batch * args.context_length))
        batches = [ids for _, (ids, _) in zip(range(n_batches), text.batch_contexts(contexts, args.batch))]
        p_wall, p_cpu = truncated_forward_rate(model, hook, batches)

    print(f"\nmodel {args.model}, hook {hook}, {args.batch} contexts x {args.context_length} tokens a batch, "
          f"{dtype}, {torch.get_num_threads()} threads; model load {load_s:.1f} s")
    print(f"harvest kept {info['n_tokens']} activations of {info['positions']} positions "
          f"({info['excluded_outliers']} outliers excluded) in {info['seconds']:.1f} s\n")
    print(f"{'':28}{'positions/s (wall)':>20}{'positions/s (CPU)':>20}")
    print(f"{'plain truncated forward':28}{p_wall:>20,.0f}{p_cpu:>20,.0f}")
    print(f"{'harvest (to cache)':28}{h_wall:>20,.0f}{h_cpu:>20,.0f}")
    print(f"{'harvest / plain':28}{h_wall / p_wall:>20.0%}{h_cpu / p_cpu:>20.0%}")
    print(f"{'kept activations/s':28}{info['n_tokens'] / info['seconds']:>20,.0f}")


if __name__ == "__main__":
    main()
