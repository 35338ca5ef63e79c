"""Parameter counts that mean something for a budget: only parameters the forward pass uses.

A module counts if it ran during one forward call with real inputs; parameters are counted
once (shared ones too), per top-level component, so dead modules (built but never called)
do not inflate the figure.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def used_parameters(model: nn.Module, run_forward: Callable[[], Any]) -> dict[str, int]:
    """{component: parameters used} for the top-level children of `model`, plus 'total'."""
    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, _in, _out: called.add(id(mod))) for m in model.modules()]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in hooks:
            h.remove()
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for comp_name, comp in [("(root)", model), *model.named_children()]:
        modules = [comp] if comp_name == "(root)" else list(comp.modules())
        n = 0
        for mod in modules:
            if id(mod) not in called:
                continue
            for p in mod._parameters.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        if n:
            counts[comp_name] = n
    counts["total"] = sum(counts.values())
    return counts


def format_counts(counts: dict[str, int]) -> str:
    width = max(len(k) for k in counts)
    return "\n".join(f"  {k:<{width}}  {v:>12,}" for k, v in counts.items())
