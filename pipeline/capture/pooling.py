"""Pool hidden states over the positions a mask selects; every position comes from the mask.

Shapes: ``hidden`` is ``[B, T, d]``; masks are bool ``[B, T]``. Padding may sit on either
side: nothing here assumes where real tokens start or end. Masked-out positions may hold
garbage (even NaN from fully-masked attention rows), so they are selected away with
``torch.where``, never multiplied by zero.
"""

from __future__ import annotations

import torch


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position of each row: ``[B]`` (long). Rows must have one."""
    T = mask.shape[1]
    return (T - 1) - torch.flip(mask.long(), dims=[1]).argmax(dim=1)


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last masked position: ``[B, d]`` float32."""
    idx = last_positions(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx].float()


def pool_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked positions: ``[B, d]`` float32 (NaN for an empty row)."""
    m = mask.unsqueeze(-1)
    total = torch.where(m, hidden.float(), torch.zeros((), dtype=torch.float32, device=hidden.device)).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).float()


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every masked position, rows in order: ``[mask.sum(), d]`` float32."""
    return hidden[mask].float()
