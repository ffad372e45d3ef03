"""Bounds of a recorded graph (:mod:`robustsim.nn.graph`) from the bounds of its nodes.

**Lipschitz constant.** Node values are functions of the graph's input; L_input = 1 and a node with constants
l_i in its image-carrying inputs has L <= sum_i l_i L_i (triangle inequality), or sqrt(sum_i (l_i L_i)^2) for a
concatenation (its parts are orthogonal). A concatenation of order statistics (max and min over the same dims) of
one node is a sub-vector of that node's sorted groups, and sorting is non-expansive: L <= L_source (GroupSort's
``cat(min, max)``). A leaf counts as one node with its own bound.

**Rounding.** Each node n adds at most t_n = a_n sum_i ||in_i|| + c_n ||out|| + d_n (its rule; a componentwise
bound on the recorded input where the rule has one). An error made at a node reaches the output amplified by at
most prod over the nodes of max(1, s_n), s_n the node's constant in its inputs jointly (sum of the l_i, or
their root-sum-square), since any path's amplification is a product of those: the analysis of
:mod:`robustsim.certify.rounding`, with k_n inputs weighting a_n in its sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robustsim.errors import InputError, RobustsimError
from robustsim.nn.bounds import check_hooks, one_thread
from robustsim.nn.convnorm import dilate, gram_bound
from robustsim.nn.graph import Graph, Node, record, replay
from robustsim.nn.rounding import UNITS, gamma, memo, module_local, module_terms, unit_of
from robustsim.nn.rules import digest
from robustsim.nn.rules import memo as rule_memo


def leaf_bound(module: nn.Module) -> float:
    """A leaf's own bound: its ``lipschitz_bound`` (a number, or a method deriving it from its tensors)."""
    check_hooks(module)
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        with one_thread():
            own = own()
    if not isinstance(own, (int, float)) or isinstance(own, bool) or not math.isfinite(own) or own < 0:
        raise RobustsimError(f"{type(module).__name__} declares lipschitz_bound={own!r}; it must be finite and >= 0")
    return float(own)


_CAT = ("cat", "concat", "concatenate", "stack")


def _base(node: Node) -> str:
    return node.op.rsplit(".", 1)[-1]


def _order_source(graph: Graph, node: Node) -> int | None:
    """The source node when ``node`` concatenates distinct order statistics of one node over the same dims."""
    if _base(node) not in _CAT or len(node.inputs) < 2:
        return None
    found = [graph.nodes[i].order if i >= 0 else None for i in node.inputs]
    orders = [o for o in found if o is not None]
    if len(orders) < len(found):
        return None
    sources = {(o[0], o[1]) for o in orders}
    stats = [o[2] for o in orders]
    if len(sources) != 1 or len(set(stats)) != len(stats):
        return None
    return orders[0][0]


def _pair_sort(graph: Graph, node: Node) -> tuple[int, ...] | None:
    """The pair (a, b) when ``node`` concatenates maximum(a, b) and minimum(a, b) (MaxMin of two halves: a sort of
    each pair, non-expansive in (a, b)); ``(s,)`` when a and b are disjoint parts of one node s (one split)."""
    if _base(node) not in _CAT or len(node.inputs) != 2 or min(node.inputs) < 0:
        return None
    parts = [graph.nodes[i] for i in node.inputs]
    kinds = {_base(p) for p in parts}
    pairs = {frozenset(p.inputs) for p in parts}
    if kinds not in ({"maximum", "minimum"}, {"max", "min"}, {"fmax", "fmin"}) or len(pairs) != 1:
        return None
    if any(len(p.inputs) != 2 or p.rule is None or p.rule.combine != "quadrature" for p in parts):
        return None
    a, b = parts[0].inputs
    if a >= 0 and b >= 0 and a != b:
        na, nb = graph.nodes[a], graph.nodes[b]
        if na.first == nb.first and na.first is not None and _base(na) in _SPLITS and len(na.inputs) == 1:
            return (na.inputs[0],)
    return (a, b)


_SPLITS = ("split", "chunk", "unbind", "tensor_split")


def _circular_conv(graph: Graph, node: Node) -> tuple[int, float] | None:
    """(source, bound) when ``node`` is a stride-s convolution without padding of a circular pad of total at most
    the kernel's extent - 1 per axis: a (strided) circular convolution of the source, bounded at the source's
    size by the Gram bound on its own frequency grid (no wrapped pixel is read twice)."""
    call = node.call
    if call is None or _base(node) not in ("conv1d", "conv2d", "conv3d") or node.inputs[0] < 0:
        return None
    pad = graph.nodes[node.inputs[0]]
    if _base(pad) != "pad" or pad.call is None or pad.call.arg(2, "mode", "constant") != "circular":
        return None
    w = call.tensors[1]
    nd = w.dim() - 2
    if call.arg(4, "padding", 0) not in (0, (0,) * nd, [0] * nd, "valid") or int(call.arg(6, "groups", 1)) < 1:
        return None
    dilation = call.arg(5, "dilation", 1)
    dilation = tuple(dilation) if isinstance(dilation, (tuple, list)) else (int(dilation),) * nd
    amounts = list(pad.call.arg(1, "pad"))
    src = pad.inputs_tensors[0]
    size = tuple(src.shape[-nd:])
    for axis in range(nd):  # F.pad lists the last axis first
        lo, hi = amounts[2 * (nd - 1 - axis)], amounts[2 * (nd - 1 - axis) + 1]
        if lo + hi > dilation[axis] * (w.shape[2 + axis] - 1) or max(lo, hi) > size[axis]:
            return None

    groups = int(call.arg(6, "groups", 1))
    key = ("circular", size, dilation, groups) + digest(w)
    circ = rule_memo(key, lambda: gram_bound(dilate(w.detach().double(), dilation), size, groups))
    assert node.rule is not None and pad.rule is not None
    return pad.inputs[0], min(circ, node.rule.lips[0] * pad.rule.lips[0])  # the pair's own product is a bound too


def _absorbed(graph: Graph) -> dict[int, tuple[tuple[tuple[int, float], ...], str]]:
    """Nodes whose constant a pattern replaces: node -> ((input, constant) pairs, combine); the exact nodes inside a
    pattern (the pair's maximum and minimum, the circular pad) get constant 1 in the rounding growth."""
    out: dict[int, tuple[tuple[tuple[int, float], ...], str]] = {}
    for node in graph.nodes:
        if node.kind != "call":
            continue
        source = _order_source(graph, node)
        if source is not None:
            out[node.index] = (((source, 1.0),), "sum")
            continue
        pair = _pair_sort(graph, node)
        if pair is not None:
            out[node.index] = (tuple((i, 1.0) for i in pair), "quadrature")
            continue
        circ = _circular_conv(graph, node)
        if circ is not None:
            out[node.index] = (((circ[0], circ[1]),), "sum")
    return out


def _inner(graph: Graph, absorbed: dict) -> set[int]:
    """The exact nodes a pattern stands for (their growth is the pattern's)."""
    inner: set[int] = set()
    for index in absorbed:
        node = graph.nodes[index]
        if _pair_sort(graph, node) is not None:
            inner.update(node.inputs)
        elif _base(node).startswith("conv"):
            inner.add(node.inputs[0])
    return inner


def node_constant(
    graph: Graph, node: Node, absorbed: dict | None = None
) -> tuple[float, tuple[tuple[int, float], ...], str]:
    """(the node's constant in its inputs jointly, (input, constant) pairs, combine)."""
    if node.kind in ("sealed", "declared"):
        bound = node.declared if node.declared is not None else leaf_bound(node.leaf())
        return bound, ((node.inputs[0], bound),), "sum"
    if absorbed is not None and node.index in absorbed:
        pairs, combine = absorbed[node.index]
    else:
        assert node.rule is not None
        pairs, combine = tuple(zip(node.inputs, node.rule.lips, strict=True)), node.rule.combine
    values = [c for _, c in pairs]
    joint = math.sqrt(sum(v * v for v in values)) if combine == "quadrature" else sum(values)
    return joint, pairs, combine


def graph_lipschitz(graph: Graph) -> float:
    """The network's l2 Lipschitz constant from its nodes' (module docstring)."""
    lips = {-1: 1.0}
    absorbed = _absorbed(graph)
    for node in graph.top():
        _, pairs, combine = node_constant(graph, node, absorbed)
        try:
            terms = [c * lips[i] for i, c in pairs]
        except KeyError:
            raise InputError(f"{node.where}: {node.op} uses a value from inside a leaf module; no bound covers it") \
                from None
        lips[node.index] = math.sqrt(sum(t * t for t in terms)) if combine == "quadrature" else sum(terms)
    return lips[graph.output]


def probe(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed pseudo-random input in [0, 1) of ``shape`` (the values do not shape the graph: branches on them are
    refused)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def unit_for(t: torch.Tensor) -> float:
    return unit_of(t.dtype, t.device)


def checked_record(net: nn.Module, x: torch.Tensor, declared: float | None = None) -> Graph:
    """:func:`robustsim.nn.graph.record` on ``x``, and the net under the proof: the recorded graph replayed at a
    second input must give what the network itself computes there (a tensor computed outside PyTorch's dispatch,
    a C++ extension's or state kept between calls, would be a constant of the graph and show here)."""
    graph = record(net, x, unit_for, declared)
    other = (x + 0.25 * probe(tuple(x.shape), x.dtype, x.device)).clamp(x.min(), x.max()) if x.numel() > 1 else -x
    with torch.no_grad():
        own = net(other)
        again = replay(graph, other)
    scale = float(torch.linalg.vector_norm(own.double())) + float(torch.linalg.vector_norm(other.double()))
    gap = float(torch.linalg.vector_norm((again.double() - own.double()).flatten()))
    if not gap <= 1e4 * unit_for(own) * scale + 1e-30:
        raise InputError(
            f"the network's own forward differs from the calls robustsim recorded by {gap:.3g} at a second input: "
            "part of it runs outside PyTorch's dispatch (a C++ extension, state kept between calls); certify a "
            "network of PyTorch modules and functions"
        )
    return graph


def lipschitz_bound(module: nn.Module, example: torch.Tensor | tuple[int, ...] | None = None) -> float:
    """The l2 Lipschitz constant the function that runs proves: a leaf's own bound, else the recorded graph's on
    ``example`` (an input, or its shape without the batch; the bound holds for inputs of that shape)."""
    if getattr(module, "lipschitz_bound", None) is not None:
        return leaf_bound(module)
    if example is None:
        raise RobustsimError(
            f"{type(module).__name__}'s bound depends on its input size: pass an example input (or its shape)"
        )
    if not isinstance(example, torch.Tensor):
        p = next(iter(module.parameters()), None)
        example = probe((1, *example), p.dtype if p is not None else torch.float32, p.device if p is not None
                        else "cpu")
    return graph_lipschitz(checked_record(module, example))


@dataclass
class GraphRounding:
    """Per sample, sum of the nodes' t_n (``total``), the amplification ``growth`` = prod max(1, s_n),
    ``sensitivity`` = sum (k_n a_n + c_n), ``growth_terms`` = sum (k_n a_n + c_n s_n), the smallest unit roundoff
    met, and the calls bounded by an assumed generic rule."""

    total: torch.Tensor
    growth: float
    sensitivity: float
    growth_terms: float
    unit: float
    assumed: tuple[str, ...]


def norms(t: torch.Tensor) -> torch.Tensor:
    """(B,) float64 upper bounds on the l2 norms of the rows of ``t`` (half precision summed in float64)."""
    flat = t.detach().flatten(1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.double()
    u = UNITS[flat.dtype]
    return torch.linalg.vector_norm(flat, dim=1).double() * (1 + gamma(flat.shape[1] + 2, u))


def _in_declared(graph: Graph, node: Node) -> float | None:
    """The declared constant of the innermost declared leaf ``node`` ran in."""
    i = node.inside
    while i is not None:
        leaf = graph.nodes[i]
        if leaf.kind == "declared":
            return max(1.0, leaf.declared if leaf.declared is not None else leaf_bound(leaf.leaf()))
        i = leaf.inside
    return None


def _sealed_local(node: Node, unit: float) -> Callable[[], torch.Tensor | None]:
    """The sealed leaf's per-sample local rounding, computed when asked."""
    return lambda: module_local(node.leaf(), node.inputs_tensors[0], node.out, unit)


def graph_rounding(graph: Graph, componentwise: bool = True) -> GraphRounding:
    """The rounding sums of the executed forward (module docstring), from its recorded activations."""
    total: torch.Tensor | None = None
    growth, sens, grow_terms, units, assumed = 1.0, 0.0, 0.0, [], []
    absorbed = _absorbed(graph)
    inner = _inner(graph, absorbed)
    for node in graph.nodes:
        if node.kind == "declared":
            continue  # its inner calls are counted one by one
        x = node.inputs_tensors[0]
        unit = unit_for(node.out) if node.out.is_floating_point() else unit_for(x)
        units.append(unit)
        k = len(node.inputs)
        if node.kind == "assumed":
            s, (a, c, d), local = _in_declared(graph, node) or 1.0, (4 * unit, 4 * unit, 0.0), None
            assumed.append(node.op)
        elif node.kind == "sealed":
            module = node.leaf()
            s = memo(module, ("lipschitz",), 0.0, lambda m=module: (leaf_bound(m),))[0]
            terms = module_terms(module, tuple(x.shape[1:]), tuple(node.out.shape[1:]), unit)
            a, c, d = terms if terms is not None else (4 * unit, 4 * unit, 0.0)
            local = _sealed_local(node, unit) if componentwise else None
        else:
            s = 1.0 if node.index in inner else node_constant(graph, node, absorbed)[0]
            assert node.rule is not None
            a, c, d = node.rule.terms
            local = node.rule.local if componentwise else None
        growth *= max(1.0, s)
        sens += k * a + c
        grow_terms += k * a + c * s
        if a == c == d == 0.0:
            continue
        term = a * sum(norms(t) for t in node.inputs_tensors) + d
        if local is not None and k == 1:
            got = local()
            if got is not None:
                term = torch.minimum(term, got.to(term))
        term = term + c * norms(node.out)
        total = term if total is None else total + term
    if total is None:
        total = torch.zeros(graph.x.shape[0], dtype=torch.float64, device=graph.x.device)
    unit = min(units) if units else unit_for(graph.x)
    return GraphRounding(total, growth, sens, grow_terms, unit, tuple(dict.fromkeys(assumed)))
