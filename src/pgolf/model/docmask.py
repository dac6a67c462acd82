"""Doc-isolated causal attention masks: a query sees earlier keys of its own segment only.

A segment starts at every BOS and, with a cap, every `cap` tokens from a document's start: the
records' varlen layout (flash_attn_varlen over cu_seqlens built with max_doc_len), where a packed row
far longer than the training length is cut into documents of at most `cap` tokens. Tokens before a
row's first BOS form a document starting at position 0, as the records' cu_seqlens do.

The FlexAttention form is built block by block from the segment ids (never a T x T tensor), so a packed
row of 98,304 tokens costs a [num_blocks, num_blocks] table, not 9.6 GB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

PAD_SEGMENT = 2 ** 30  # past the last token: never equal to a real segment id


def segment_ids(idx: torch.Tensor, bos_id: int, cap: int = 0) -> torch.Tensor:
    """[B, T] int32, non-decreasing along each row; equal ids = same segment."""
    is_bos = idx == bos_id
    if cap <= 0:
        return torch.cumsum(is_bos.to(torch.int32), dim=1)
    pos = torch.arange(idx.size(1), device=idx.device).expand_as(idx)
    start = torch.where(is_bos, pos, torch.zeros_like(pos)).cummax(dim=1).values  # current document's start
    return torch.cumsum(((pos - start) % cap == 0).to(torch.int32), dim=1)


def dense_doc_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool for SDPA (True = attend)."""
    T = seg.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return (causal[None] & (seg[:, :, None] == seg[:, None, :])).unsqueeze(1)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, Q, K] bool -> (count per row, column indices with the set ones first, ascending)."""
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return blocks.sum(-1, dtype=torch.int32)[:, None], order[:, None]


def doc_block_mask(seg: torch.Tensor, block: int) -> BlockMask:
    """The same pattern as dense_doc_mask as a FlexAttention BlockMask. Segments are contiguous, so
    a kv block strictly left of a q block is empty unless its last segment is the q block's first,
    and full when its first segment is the q block's last; diagonal blocks are partial."""
    B, T = seg.shape
    n = -(-T // block)
    s = F.pad(seg, (0, n * block - T), value=PAD_SEGMENT).view(B, n, block)
    first, last = s[..., 0], s[..., -1]
    i = torch.arange(n, device=seg.device)
    left = (i[:, None] > i[None, :])[None]  # [1, q, kv]
    touches = left & (last[:, None, :] == first[:, :, None])
    full = left & (first[:, None, :] == last[:, :, None])
    partial = (touches & ~full) | torch.eye(n, dtype=torch.bool, device=seg.device)[None]

    def same_segment_causal(b, h, q, k):
        return (q >= k) & (seg[b, q] == seg[b, k])

    num, idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=same_segment_causal, seq_lengths=(T, T))
