"""Held-out loss and perplexity per source, so forgetting of general text shows during domain training."""

from __future__ import annotations

import math

import torch

from danlu.train.distributed import DistInfo, all_reduce_sum, unwrap
from danlu.train.distributed import autocast
from danlu.train.objectives import Objective


@torch.no_grad()
def heldout_metrics(model: torch.nn.Module, batches: dict[str, list[dict]], objective: Objective,
                    precision: str = "fp32", info: DistInfo = DistInfo()) -> dict[str, float]:
    """{"eval/NAME/loss": token-weighted mean loss, "eval/NAME/ppl": exp(loss)} for each source's batches.

    Under DDP each process evaluates a share of the batches on the plain module and the sums are reduced;
    an FSDP model needs every process in every forward, so there all processes run all batches."""
    fsdp = hasattr(model, "set_requires_gradient_sync") and not hasattr(model, "module")
    net = model if fsdp else unwrap(model)
    net.eval()
    out: dict[str, float] = {}
    for name, source_batches in batches.items():
        mine = source_batches if fsdp else source_batches[info.rank::info.world_size]
        totals = torch.zeros(2, dtype=torch.float64, device=info.device)
        for batch in mine:
            batch = {k: v.to(info.device) for k, v in batch.items()}
            with autocast(precision, info.device):
                totals[0] += objective.loss_sum(net, batch).double()
            totals[1] += objective.count(batch)
        if not fsdp:
            all_reduce_sum(totals)
        if totals[1] > 0:
            loss = float(totals[0] / totals[1])
            out[f"eval/{name}/loss"] = loss
            out[f"eval/{name}/ppl"] = math.exp(min(loss, 50.0))
    model.train()
    return out
