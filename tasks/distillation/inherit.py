"""TinyCLIP manual weight inheritance: initialise a smaller student from a trained teacher.

The rules follow TinyCLIP's `weight_inherit` (microsoft/Cream, TinyCLIP/src/open_clip):

- depth, "interval_front": with `step = teacher_depth // student_depth`, student block `i`
  inherits teacher block `i * step` (layers 0, step, 2*step, ...);
- width: every tensor is front-sliced (`param[:s0, :s1, ...]`), inside and outside the blocks;
- attention in-projections are viewed as (3, heads, head_dim, in) so that q, k and v each keep
  their first heads (slicing the flat (3*D, D) matrix would mix q rows into k);
- tensors whose shapes match are copied unchanged (e.g. the shared locked MiniLM text tower).

Works on any pair of open_clip models (or any modules with the same key naming); the
student is changed in place and a report says what was copied, sliced or left at init.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# `<prefix>.<index>.<rest>` for the stacked blocks of open_clip and HF transformers.
_BLOCK_KEY = re.compile(
    r"^(?P<prefix>.*?\.(?:resblocks|layer|layers|blocks))\.(?P<idx>\d+)\.(?P<rest>.+)$"
)


@dataclass
class HeadLayout:
    """Head count and head width of one attention module (from the module itself)."""

    num_heads: int
    head_dim: int


@dataclass
class InheritReport:
    """What happened to every student tensor.

    `copied`: student key -> teacher key (same shape). `sliced`: student key -> (teacher key,
    teacher shape, student shape). `initialised`: student key -> why it kept its init.
    `layer_map`: block prefix -> teacher block index for each student block.
    """

    copied: dict[str, str] = field(default_factory=dict)
    sliced: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    layer_map: dict[str, list[int]] = field(default_factory=dict)

    @property
    def inherited_fraction(self) -> float:
        """Share of student tensors that received teacher values (copied or sliced)."""
        total = len(self.copied) + len(self.sliced) + len(self.initialised)
        return (len(self.copied) + len(self.sliced)) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, the layer map and the keys left at init)."""
        return {
            "copied": len(self.copied),
            "sliced": len(self.sliced),
            "initialised": len(self.initialised),
            "inherited_fraction": round(self.inherited_fraction, 4),
            "layer_map": self.layer_map,
            "initialised_keys": dict(self.initialised),
        }


def interval_front(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher block kept for each student block: 0, step, 2*step, ... (TinyCLIP).

    A student deeper than its teacher keeps blocks 0..teacher_depth-1 and maps the rest to
    -1 (left at init), since there is nothing to inherit for them.
    """
    if teacher_depth < 1 or student_depth < 1:
        raise ValueError(
            f"depths must be >= 1, got teacher {teacher_depth}, student {student_depth}"
        )
    if student_depth > teacher_depth:
        return [i if i < teacher_depth else -1 for i in range(student_depth)]
    step = teacher_depth // student_depth
    return [i * step for i in range(student_depth)]


def _block_depths(keys: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if m:
            prefix, idx = m.group("prefix"), int(m.group("idx"))
            depths[prefix] = max(depths.get(prefix, 0), idx + 1)
    return depths


def _head_layouts(model: nn.Module) -> dict[str, HeadLayout]:
    """Attention modules by name: nn.MultiheadAttention and open_clip's Attention both carry
    `num_heads`, `head_dim` and a fused `in_proj_weight`."""
    layouts = {}
    for name, module in model.named_modules():
        if hasattr(module, "in_proj_weight") and hasattr(module, "num_heads"):
            num_heads = int(module.num_heads)
            head_dim = int(getattr(module, "head_dim", module.in_proj_weight.shape[1] // num_heads))
            layouts[name] = HeadLayout(num_heads, head_dim)
    return layouts


def front_slice(src: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`src[:shape[0], :shape[1], ...]`; fails if the target is larger in any dimension."""
    if src.dim() != len(shape) or any(s > t for s, t in zip(shape, src.shape, strict=True)):
        raise ValueError(f"cannot front-slice {tuple(src.shape)} to {shape}")
    return src[tuple(slice(0, s) for s in shape)]


def slice_qkv(
    src: torch.Tensor, teacher: HeadLayout, student: HeadLayout, shape: tuple
) -> torch.Tensor:
    """Slice a fused in-projection (weight (3*H*d, in) or bias (3*H*d,)) head by head.

    Viewed as (3, heads, head_dim[, in]): keep the first student heads, the first student
    head_dim rows of each and the first student input channels.
    """
    if src.shape[0] != 3 * teacher.num_heads * teacher.head_dim:
        raise ValueError(f"in-projection {tuple(src.shape)} does not match {teacher}")
    if student.num_heads > teacher.num_heads or student.head_dim > teacher.head_dim:
        raise ValueError(f"student heads {student} exceed teacher heads {teacher}")
    grid = src.reshape(3, teacher.num_heads, teacher.head_dim, *src.shape[1:])
    kept = grid[:, : student.num_heads, : student.head_dim]
    if src.dim() == 2:
        kept = kept[..., : shape[1]]
    return kept.reshape(shape)


def slice_out_proj(
    src: torch.Tensor, teacher: HeadLayout, student: HeadLayout, shape: tuple
) -> torch.Tensor:
    """Slice an attention out-projection weight (out, H*d): its inputs are per-head outputs,
    so keep the first student_head_dim channels of each kept head, then the first outputs."""
    grid = src.reshape(src.shape[0], teacher.num_heads, teacher.head_dim)
    kept = grid[: shape[0], : student.num_heads, : student.head_dim]
    return kept.reshape(shape)


def _teacher_key(student_key: str, maps: dict[str, list[int]]) -> str | None:
    m = _BLOCK_KEY.match(student_key)
    if not m or m.group("prefix") not in maps:
        return student_key
    teacher_idx = maps[m.group("prefix")][int(m.group("idx"))]
    if teacher_idx < 0:
        return None
    return f"{m.group('prefix')}.{teacher_idx}.{m.group('rest')}"


def _attention_of(key: str, layouts: dict[str, HeadLayout]) -> tuple[str, str] | None:
    """(attention module name, parameter role) when `key` is a head-structured tensor."""
    module, _, leaf = key.rpartition(".")
    if module in layouts and leaf in ("in_proj_weight", "in_proj_bias"):
        return module, "qkv"
    parent, _, child = module.rpartition(".")
    if parent in layouts and child == "out_proj" and leaf == "weight":
        return parent, "out"
    return None


def _inherit_tensor(
    s_key: str,
    t_key: str,
    src: torch.Tensor,
    shape: tuple[int, ...],
    t_heads: dict[str, HeadLayout],
    s_heads: dict[str, HeadLayout],
) -> torch.Tensor:
    attn = _attention_of(s_key, s_heads)
    t_attn = _attention_of(t_key, t_heads)
    if attn and t_attn:
        s_layout, t_layout = s_heads[attn[0]], t_heads[t_attn[0]]
        if attn[1] == "qkv":
            return slice_qkv(src, t_layout, s_layout, shape)
        return slice_out_proj(src, t_layout, s_layout, shape)
    return front_slice(src, shape)


@torch.no_grad()
def inherit_weights(teacher: nn.Module, student: nn.Module) -> InheritReport:
    """Initialise `student` in place from `teacher` by TinyCLIP manual inheritance.

    Every student tensor is matched to a teacher tensor by name (block indices remapped by
    `interval_front`); equal shapes are copied, smaller ones sliced, anything with no
    counterpart (or larger than the teacher's) keeps its initialisation and is reported.
    """
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    t_depths, s_depths = _block_depths(list(t_state)), _block_depths(list(s_state))
    maps = {p: interval_front(t_depths[p], d) for p, d in s_depths.items() if p in t_depths}
    t_heads, s_heads = _head_layouts(teacher), _head_layouts(student)
    report = InheritReport(layer_map=maps)
    new_state: dict[str, torch.Tensor] = {}
    for s_key, s_val in s_state.items():
        t_key = _teacher_key(s_key, maps)
        if t_key is None:
            report.initialised[s_key] = "student block deeper than the teacher"
            continue
        if t_key not in t_state:
            report.initialised[s_key] = "no teacher tensor of this name"
            continue
        src = t_state[t_key]
        shape = tuple(s_val.shape)
        if tuple(src.shape) == shape:
            new_state[s_key] = src.clone()
            report.copied[s_key] = t_key
            continue
        try:
            new_state[s_key] = _inherit_tensor(s_key, t_key, src, shape, t_heads, s_heads).clone()
        except ValueError as exc:
            report.initialised[s_key] = f"shape {shape} not inheritable from {t_key}: {exc}"
            continue
        report.sliced[s_key] = (t_key, tuple(src.shape), shape)
    # Buffers and parameters alike: load_state_dict keeps dtype/device of the student.
    student.load_state_dict(new_state, strict=False)
    return report
