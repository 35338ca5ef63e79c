"""Parameter budgets: the widest model of a head config within a budget of used parameters, and what it
costs to train at a batch size in fp32.

    fit = fit_budget(config, 1_000_000)            # scales model.<width_key> (and depth, where asked)
    mem = training_memory(config, batch=64)        # bytes: parameters, gradients, Adam, EMA, activations

Parameters count as the forward pass uses them (rissole.models.params). Activation memory is measured,
not modelled: one real training step (the head's loss on a random batch of the training shapes, then
backward) runs under torch.autograd.graph.saved_tensors_hooks, and every tensor autograd saves for the
backward pass is summed once per storage (parameters excluded: they are counted as parameters). On a
GPU the peak CUDA allocation of the same step, optimizer step included, is measured beside it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rissole_runtime.errors import ConfigError

GIB = 2**30
TARGETS = {"GTX 1080 Ti (11 GiB)": 11 * GIB, "Jetson Orin shared memory (8 GiB)": 8 * GIB}
WIDTH_STEP = 8  # widths tried: multiples of 8 (and of the attention heads)


def parse_count(text: str) -> int:
    """'1M', '0.5M', '250k', '2e6', '1500000' -> an integer count."""
    t = str(text).strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ConfigError(f"{text!r}: expected a count such as 1M, 0.5M, 250k or 2000000") from None
    if value < 1:
        raise ConfigError(f"{text!r}: expected a positive count")
    return int(round(value))


def parse_bytes(text: str) -> int:
    """'8G', '11GiB', '512M' -> bytes (binary units)."""
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise ConfigError(f"{text!r}: expected a size such as 8G, 11GiB or 512M") from None


@dataclass
class BudgetFit:
    model: dict[str, Any]  # the resolved model section
    counts: dict[str, int]  # used parameters per component, and 'total'
    tried: list[tuple[int, int, int]] = field(default_factory=list)  # (width, depth, total)


def head_of(config: dict[str, Any]) -> Any:
    from rissole.heads.registry import head

    return head(config.get("kind", "rissole"), "the config")


def count(config: dict[str, Any]) -> dict[str, int]:
    spec = head_of(config)
    return spec.parameter_counts(spec.build_model(config["model"]))


def fit_budget(config: dict[str, Any], budget: int, depths: list[int] | None = None, max_width: int = 2048) -> BudgetFit:
    """The model section, width (and, among `depths`, depth) as large as fits `budget` used parameters; the
    config's depth by default. Refused when even the narrowest model is over the budget."""
    spec = head_of(config)
    model = dict(config["model"])
    parsed = spec.load("model_config").from_dict(model)  # unknown keys (another kind's section) refused here
    heads = int(getattr(parsed, "num_heads", 1))
    step = WIDTH_STEP * heads // math.gcd(WIDTH_STEP, heads)
    depths = depths or [int(getattr(parsed, spec.depth_key))]
    best: BudgetFit | None = None
    tried: list[tuple[int, int, int]] = []
    for depth in depths:
        width = step
        while width <= max_width:
            trial = {**model, spec.width_key: width, spec.depth_key: depth}
            counts = count({**config, "model": trial})
            tried.append((width, depth, counts["total"]))
            if counts["total"] > budget:
                break
            if best is None or counts["total"] > best.counts["total"]:
                best = BudgetFit(trial, counts)
            width += step
    if best is None:
        smallest = min(t[2] for t in tried)
        raise ConfigError(f"no {spec.kind} model of this config fits {budget:,} parameters: the narrowest "
                          f"({spec.width_key} {step}) uses {smallest:,}. Raise --params, or shrink other model keys.")
    best.tried = tried
    return best


def training_memory(config: dict[str, Any], batch: int, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """fp32 training memory at `batch` (bytes): parameters, gradients, Adam's two moments, the EMA copy (when
    train.ema_decay is set), and the activations autograd saves in one real step; with a CUDA device also
    the step's peak allocation (torch.cuda.max_memory_allocated, optimizer step included)."""
    spec = head_of(config)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = spec.build_model(config["model"]).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if storage.data_ptr() not in param_ptrs and key not in seen:
            seen.add(key)
            saved += storage.nbytes()
        return t

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = spec.load("synthetic_loss")(model, batch, gen)
    loss.backward()
    opt.step()
    ema = (config.get("train") or {}).get("ema_decay", 0.999) is not None
    out: dict[str, Any] = {
        "batch": batch, "parameters": n_params, "bytes": {
            "parameters": 4 * n_params, "gradients": 4 * n_params, "adam_moments": 8 * n_params,
            "ema": 4 * n_params if ema else 0, "activations": saved}}
    out["bytes"]["total"] = sum(out["bytes"].values())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(dev) - base + 4 * n_params  # + the weights
        out["cuda_device"] = torch.cuda.get_device_name(dev)
    return out


def fits(total: int, extra: dict[str, int] | None = None) -> dict[str, bool]:
    return {name: total <= cap for name, cap in {**TARGETS, **(extra or {})}.items()}


def resolved_config(config: dict[str, Any], fit: BudgetFit, budget: int) -> dict[str, Any]:
    """The config with the fitted model section and train.max_params set to the budget (the trainer then
    refuses a later edit that breaks it)."""
    out = copy.deepcopy(config)
    out["model"] = fit.model
    out.setdefault("train", {})["max_params"] = budget
    return out
