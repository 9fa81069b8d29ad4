"""saezoo against the SAE libraries a user would pick instead, on identical data.

    bash benchmarks/peers/setup.sh        # once: the peers' own venv (benchmarks/peers/.venv)
    python benchmarks/peers/run.py        # prints a markdown table, writes results.json

Every library trains a 4096-latent SAE on the same synthetic activations (d_in 512,
4096-token batches read from one safetensors file), Adam at a constant lr 1e-3, 10
warm-up steps then 200 timed ones, 2 torch threads, each in its own process (peak RSS is
per library). saezoo runs through its real ``Trainee.train_step`` with the system
python; each peer through its own trainer's step code with the venv's python (see
drivers.py). Held-out explained variance, L0 and dead fraction use one formula for all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import SYNTHETIC, machine, markdown_table  # noqa: E402

# A peer run with glibc told what saezoo tells it in-process (saezoo/host_memory.py): serve
# large blocks from the heap and keep freed memory. How much of saezoo's lead is that alone.
HEAP = " (glibc heap)"
HEAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}

# name -> which interpreter runs it
PEERS = {
    "saezoo flat": "saezoo",
    "saezoo topk": "saezoo",
    "sae-lens standard": "venv",
    "sae-lens topk": "venv",
    "sparsify topk": "venv",
    "dictionary_learning standard": "venv",
    "dictionary_learning topk": "venv",
    "saezoo flat bf16": "saezoo",
    "saezoo topk bf16": "saezoo",
    "saezoo flat b_dec zeros": "saezoo",
    "dictionary_learning standard" + HEAP: "venv",
    "sparsify topk" + HEAP: "venv",
}
EXTRAS = ("dictionary_learning topk", "saezoo flat bf16", "saezoo topk bf16", "saezoo flat b_dec zeros",
          "dictionary_learning standard" + HEAP, "sparsify topk" + HEAP)
DEFAULT = [n for n in PEERS if n not in EXTRAS]



def make_data(path: Path, d_in: int, batch: int, n_batches: int, eval_tokens: int, seed: int) -> None:
    """Draw the batches from saezoo's SyntheticSource and save them to ``path``."""
    import torch
    from safetensors.torch import save_file

    from common import synthetic_source

    src = synthetic_source(d_in, seed)
    cfg = src.cfg
    batches = src.batches(batch)
    train = torch.cat([next(batches) for _ in range(n_batches)])
    meta = {"batch": str(batch), "synthetic": json.dumps(dataclasses.asdict(cfg))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"train": train, "eval": src.eval_activations(eval_tokens)}, str(tmp), metadata=meta)
    tmp.replace(path)


def data_matches(path: Path, want: dict[str, str]) -> bool:
    """Whether ``path`` holds the data these settings ask for (read from its header,
    without importing torch)."""
    if not path.exists():
        return False
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__", {})
    synthetic = json.loads(meta.get("synthetic", "{}"))
    return (
        meta.get("batch") == want["batch"]
        and synthetic.get("d_in") == int(want["d_in"])
        and synthetic.get("seed") == int(want["seed"])
        and {k: v for k, v in synthetic.items() if k in SYNTHETIC} == SYNTHETIC
        and header.get("train", {}).get("shape", [0])[0] == int(want["tokens"])
        and header.get("eval", {}).get("shape", [0])[0] == int(want["eval_tokens"])
    )


def run_one(name: str, python: str, data: Path, a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, str(HERE / "drivers.py"), name.removesuffix(HEAP), "--data", str(data), "--json", str(out),
               "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads),
               "--width", str(a.width), "--k", str(a.k), "--lr", str(a.lr), "--l1", str(a.l1)]
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                   TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", **(HEAP_ENV if name.endswith(HEAP) else {}))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.exists():
            result = {**json.loads(out.read_text()), "name": name}
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            result = {"name": name, "ok": False, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
        result["wall_s"] = wall
        return result


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in results if r.get("ok") and key in r]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="saezoo vs SAELens, sparsify and dictionary_learning: train-step throughput, memory, quality.")
    p.add_argument("--only", nargs="+", choices=list(PEERS), help="libraries to run (default: all but the extras)")
    p.add_argument("--all", action="store_true", help="also run the extras (dictionary_learning topk; saezoo with bf16 autocast; saezoo flat with sae-lens's zero decoder-bias init; two peers with the glibc setting saezoo makes)")
    p.add_argument("--steps", type=int, default=200, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=1, help="repeat every library this many times, interleaved; throughput is the median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient of the ReLU SAEs (same loss scale in all three)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--train-batches", type=int, default=64, help="distinct training batches in the data file (steps cycle through them)")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=HERE / ".data" / "synthetic.safetensors")
    p.add_argument("--venv", type=Path, default=HERE / ".venv")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--make-data", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    names = a.only or (list(PEERS) if a.all else DEFAULT)
    want = {"batch": str(a.batch), "d_in": str(a.d_in), "seed": str(a.seed),
            "tokens": str(a.batch * a.train_batches), "eval_tokens": str(a.eval_tokens)}
    if a.make_data:
        make_data(a.data, a.d_in, a.batch, a.train_batches, a.eval_tokens, a.seed)
        return 0
    if not data_matches(a.data, want):
        print(f"generating {a.train_batches} x {a.batch} training tokens + {a.eval_tokens} held-out -> {a.data}", file=sys.stderr)
        # In a child process: this one stays small, so the children's ru_maxrss is their own.
        subprocess.run([sys.executable, __file__, "--make-data", *(argv if argv is not None else sys.argv[1:])], check=True)
    venv_python = a.venv / "bin" / "python"

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rnd in range(a.rounds):
        for name in names:
            python = sys.executable if PEERS[name] == "saezoo" else str(venv_python)
            if PEERS[name] == "venv" and not venv_python.exists():
                runs[name].append({"name": name, "ok": False, "error": f"{venv_python} missing: run bash benchmarks/peers/setup.sh"})
                continue
            r = run_one(name, python, a.data, a)
            status = f"{r['tokens_per_s_median']:,.0f} tok/s" if r.get("ok") else f"FAILED: {r.get('error')}"
            print(f"[round {rnd + 1}/{a.rounds}] {name}: {status} ({r['wall_s']:.0f}s)", file=sys.stderr)
            runs[name].append(r)

    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r.get("ok")]
        first = ok[0] if ok else rs[0]
        summary[name] = {
            "ok": bool(ok),
            "version": first.get("version"),
            "tokens_per_s": median_of(rs, "tokens_per_s_median"),
            "tokens_per_s_mean_step": median_of(rs, "tokens_per_s"),
            "step_ms_median": median_of(rs, "step_ms_median"),
            "tokens_per_cpu_s": median_of(rs, "tokens_per_cpu_s"),
            "rss_peak_mib": median_of(rs, "rss_peak_mib"),
            "rss_setup_mib": median_of(rs, "rss_setup_mib"),
            "vm_hwm_mib": median_of(rs, "vm_hwm_mib"),
            "eval": first.get("eval"),
            "saezoo_evaluate": first.get("saezoo_evaluate"),
            "error": None if ok else first.get("error"),
        }

    def tps(n: str) -> float | None:
        return summary.get(n, {}).get("tokens_per_s")

    dense_peers = [n for n in ("sae-lens standard", "dictionary_learning standard") if tps(n)]
    fastest_dense = max(dense_peers, key=tps) if dense_peers else None
    def cps(n: str | None) -> float | None:
        return summary.get(n, {}).get("tokens_per_cpu_s") if n else None

    ratios = {
        "saezoo flat / fastest of sae-lens standard, dictionary_learning standard": {
            "against": fastest_dense, "ratio": ratio(tps("saezoo flat"), tps(fastest_dense) if fastest_dense else None),
            "ratio_cpu": ratio(cps("saezoo flat"), cps(fastest_dense)), "target": 1.2},
        "saezoo topk / sparsify topk": {
            "against": "sparsify topk", "ratio": ratio(tps("saezoo topk"), tps("sparsify topk")),
            "ratio_cpu": ratio(cps("saezoo topk"), cps("sparsify topk")), "target": 1.5},
    }

    header = ["library", "version", "tokens/s", "step ms", "tokens/CPU-s", "peak RSS MiB", "RSS before training MiB", "EV", "L0", "dead"]
    rows = []
    for name, s in summary.items():
        if not s["ok"]:
            rows.append([name, s["version"], "failed", "", "", "", "", "", "", ""])
            continue
        ev = s["eval"] or {}
        rows.append([name, s["version"], s["tokens_per_s"], s["step_ms_median"], s["tokens_per_cpu_s"], s["rss_peak_mib"], s["rss_setup_mib"],
                     ev.get("explained_variance"), ev.get("l0"), ev.get("dead_fraction")])
    m = machine()
    done = [r for rs in runs.values() for r in rs if r.get("ok")]
    if done:
        m.update({k: done[0]["machine"][k] for k in ("torch", "threads") if k in done[0].get("machine", {})})
    lines = [
        f"d_in {a.d_in}, {a.width} latents, batch {a.batch}, Adam lr {a.lr:g} constant, {a.warmup} warm-up + {a.steps} timed steps, "
        f"{a.threads} threads, k={a.k}, L1 coefficient {a.l1:g}; {a.rounds} round(s); "
        f"{m['cpu']}, {m['cores']} cores, load average {m.get('load_average')}",
        "",
        markdown_table(header, rows),
        "",
        markdown_table(["ratio", "against", "tokens/s", "tokens/CPU-s", "target"],
                       [[k, v["against"], v["ratio"], v["ratio_cpu"], f">= {v['target']}x"] for k, v in ratios.items()]),
    ]
    failed = {n: s["error"] for n, s in summary.items() if not s["ok"]}
    if failed:
        lines += ["", "failed:"] + [f"- {n}: {e}" for n, e in failed.items()]
    text = "\n".join(lines)
    print(text)
    a.out.write_text(json.dumps({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "synthetic": SYNTHETIC, "machine": m, "summary": summary, "ratios": ratios, "runs": runs, "table": text,
    }, indent=1, default=str))
    print(f"\nwrote {a.out}", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
