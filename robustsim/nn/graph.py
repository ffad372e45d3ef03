"""The function that runs, recorded: a network's forward on a real input, as the graph of torch calls that touched
the input's values (every call PyTorch dispatches: what hooks, instance-level ``forward`` replacements,
parametrizations and casts do is in it), with the modules whose bound is proven as a unit kept whole.

:func:`record` runs ``net(x)`` under a :class:`torch.overrides.TorchFunctionMode` (the mechanism ``torch.fx``'s
and ``torch.export``'s tracers build on, here on concrete values, so no control flow is guessed) and returns a
:class:`Graph`: one :class:`Node` per call whose tensor arguments carry the input, each bounded by a rule of
:mod:`robustsim.nn.rules`. Constants (weights, the tensors parametrizations compute) are the values the forward
applied. Leaves:

- **sealed** (robustsim's layers: ``rounding_terms`` and ``lipschitz_bound``): one node, bounded by the layer's own
  proof; its ``forward`` must be its class's, with no hook on it or below it;
- **declared** (a user module with a ``lipschitz_bound``): one node for the Lipschitz constant (the user's proof,
  for the class's forward, checked as above), its inner calls recorded for the rounding.

Refused with one line naming the module path: a call with no rule on the input's values, a random call in the
current mode (dropout, DropConnect, ... while training), a forward that updates the network's own tensors, the
input's values read into Python (``bool``, ``item``: control flow that a different image could take otherwise),
an in-place write that aliases another recorded tensor, a compiled or scripted module (its calls are not
dispatched through Python), an output that does not come from the input through recorded calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from robustsim.errors import InputError, RobustsimError
from robustsim.nn.bounds import check_hooks, observer
from robustsim.nn.rules import Call, NoRule, Rule, rule_for

_RANDOM = {
    "rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "bernoulli", "bernoulli_", "normal",
    "normal_", "multinomial", "randperm", "uniform_", "random_", "exponential_", "cauchy_", "geometric_",
    "log_normal_", "poisson", "gumbel_softmax", "normal_like",
}
_READS = {"__bool__", "item", "tolist", "numpy", "__float__", "__int__", "__index__", "__complex__", "equal",
          "allclose", "is_nonzero", "__array__", "__reduce_ex__", "__deepcopy__", "nonzero", "argwhere",
          "__contains__", "__format__"}
_META = {"__len__", "dim", "size", "numel", "stride", "element_size", "nelement", "ndimension", "is_floating_point",
         "is_complex", "is_contiguous", "data_ptr", "get_device", "storage_offset", "is_signed", "has_names",
         "is_inference", "is_pinned", "is_shared"}
_DISCRETE = {"gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
             "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "isnan", "isinf", "isfinite", "sign",
             "signbit", "argmax", "argmin", "argsort", "any", "all", "isclose", "logical_not", "logical_and",
             "logical_or", "__and__", "__or__", "__invert__"}
_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "rrelu"}


def module_hooks() -> list[str]:
    """Names of torch's global module hooks now registered (they run on every module's call)."""
    from torch.nn.modules import module as m

    found = []
    for what in ("_global_forward_pre_hooks", "_global_forward_hooks"):
        for hook in getattr(m, what, {}).values():
            if not getattr(hook, "_robustsim_observer", False):
                found.append(getattr(hook, "__qualname__", type(hook).__name__))
    return found


@dataclass
class Node:
    """One call on the input's values (or a leaf module's call): its inputs are node indices (-1 the graph's input)."""

    index: int
    op: str
    where: str
    inputs: tuple[int, ...]
    out: torch.Tensor
    rule: Rule | None = None  # None for a declared leaf (its constant is ``declared``)
    inside: int | None = None  # the declared leaf this call ran in
    module: nn.Module | None = None  # a leaf's module
    declared: float | None = None
    kind: str = "call"  # "call", "sealed", "declared"
    order: tuple | None = None  # (source node, dims, statistic) for max / min reductions
    call: Call | None = field(default=None, repr=False)  # the recorded call (for patterns across nodes)
    first: int | None = None  # the first node of the same call (the parts of one split)
    inputs_tensors: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    def leaf(self) -> nn.Module:
        """The module of a sealed or declared leaf."""
        assert self.module is not None, f"{self.where} is not a leaf"
        return self.module


@dataclass
class Graph:
    """The recorded calls in execution order; ``output`` the node whose value the network returned."""

    nodes: list[Node]
    output: int
    x: torch.Tensor

    def top(self) -> list[Node]:
        """The nodes outside every declared leaf (the Lipschitz composition)."""
        return [n for n in self.nodes if n.inside is None]


def _leaf_kind(module: nn.Module) -> str | None:
    if callable(getattr(module, "rounding_terms", None)) and getattr(module, "lipschitz_bound", None) is not None:
        return "sealed"
    if getattr(module, "lipschitz_bound", None) is not None:
        return "declared"
    return None


def _owner(module: nn.Module, attr: str) -> type | None:
    """The class whose body defines ``attr`` for ``module`` (None: the instance itself holds it)."""
    if attr in module.__dict__:
        return None
    return next((c for c in type(module).__mro__ if attr in c.__dict__), None)


def _check_own_forward(module: nn.Module, path: str) -> None:
    """A leaf's bound is proven for its class's forward: refuse an instance-level forward or a hook on it or below,
    and a subclass that overrides the forward of the class whose bound it inherits without stating a bound or
    rounding of its own (robustsim's SLLConv2d states its rounding beside the forward its base's proof covers)."""
    proof = _owner(module, "lipschitz_bound")
    forward = _owner(module, "forward")
    vouched = forward is not None and any(a in forward.__dict__ for a in ("lipschitz_bound", "rounding_terms"))
    if proof is not None and forward is not None and not issubclass(proof, forward) and not vouched:
        raise InputError(
            f"{path} ({type(module).__name__}) overrides the forward of {proof.__name__}, whose bound is proven for "
            f"its own forward; declare a lipschitz_bound on {type(module).__name__} too, or do not override forward"
        )
    for name, sub in module.named_modules():
        where = f"{path}.{name}" if name else path
        if "forward" in sub.__dict__:
            raise InputError(
                f"{where} ({type(sub).__name__}) runs an instance-level forward (module.forward = ..., e.g. "
                "accelerate's hooks), not its class's, whose bound is proven; remove it (accelerate: "
                "remove_hook_from_module) before certifying"
            )
        try:
            check_hooks(sub)
        except RobustsimError as err:
            raise InputError(f"{where}: {err}") from None


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, net: nn.Module, x: torch.Tensor, unit_for: Any, declared: float | None = None) -> None:
        super().__init__()
        self.net, self.declared = net, declared
        self.nodes: list[Node] = []
        self.of: dict[int, tuple[int, torch.Tensor]] = {id(x): (-1, x)}  # id(tensor) -> (node, tensor kept alive)
        self.discrete: set[int] = set()
        self._keep: list[torch.Tensor] = []  # discrete tensors kept alive (their ids stay theirs)
        self.paths = {id(m): (f"net.{n}" if n else "net") for n, m in net.named_modules()}
        self.stack: list[str] = ["net"]
        self.sealed = 0
        self.inside: list[int] = []
        self.unit_for = unit_for
        self.x = x

    # -- module paths, from torch's global hooks (observers: they change nothing)
    def enter(self, module: nn.Module, args: Any) -> None:
        self.stack.append(self.paths.get(id(module), f"{self.stack[-1]}.<{type(module).__name__}>"))

    def leave(self, module: nn.Module, args: Any, out: Any) -> None:
        if len(self.stack) > 1:
            self.stack.pop()

    def node_of(self, t: Any) -> int | None:
        kept = self.of.get(id(t)) if isinstance(t, torch.Tensor) else None
        return kept[0] if kept is not None and kept[1] is t else None

    def add(self, node: Node, out: Any) -> None:
        self.nodes.append(node)
        if isinstance(out, torch.Tensor):
            self.of[id(out)] = (node.index, out)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if self.sealed:
            return func(*args, **kwargs)
        name = resolve_name(func) or getattr(func, "__name__", repr(func))
        base = name.rsplit(".", 1)[-1]
        flat = _flat(args) + _flat(kwargs.values())
        tensors = tuple(t for t in flat if isinstance(t, torch.Tensor))
        variable = tuple(i for i, t in enumerate(tensors) if self.node_of(t) is not None)
        self._refuse(name, base, args, kwargs, tensors, variable)
        out = func(*args, **kwargs)
        if not variable:
            return out
        if base in _DISCRETE:  # a comparison's result: no value to bound, but whatever uses it is refused
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    self.discrete.add(id(o))
                    self._keep.append(o)
            return out
        if not isinstance(out, (torch.Tensor, tuple, list)) or (
            isinstance(out, (tuple, list)) and not any(isinstance(o, torch.Tensor) for o in out)
        ):
            if isinstance(out, (bool, int, float, complex)) and base not in _META and not name.endswith("__get__"):
                raise InputError(f"{self.stack[-1]}: {name} reads the image's values into Python; no rule")
            return out  # shapes, dtypes, sizes: not the image's values
        self._record(Call(name, func, tuple(args), dict(kwargs), out, tensors, variable))
        return out

    def _refuse(self, name: str, base: str, args: tuple, kwargs: dict, tensors: tuple, variable: tuple) -> None:
        """InputError for a call no bound can cover (module docstring), before it runs."""
        where = self.stack[-1]
        reads = (
            f"{where}: {name} reads the image's values into Python (data-dependent control flow), so another "
            "image may run another function; make the forward branch-free in the image"
        )
        if any(id(t) in self.discrete and self.node_of(t) is None for t in tensors):
            if base in _READS:
                raise InputError(reads)
            raise InputError(f"{where}: {name} uses values computed from the image by a comparison, an argmax or a "
                             "sort order: no Lipschitz rule")
        if base in _RANDOM or (base in _DROPOUT and self._random_dropout(args, kwargs, base)):
            raise InputError(
                f"{where}: {name} is random in the current mode (training?); call .eval() (and remove random "
                "parametrizations such as DropConnect) before certifying"
            )
        if not variable:
            return
        if base in _READS:
            raise InputError(reads)
        if base == "__setitem__":
            raise InputError(f"{where}: an in-place assignment (x[...] = ...) into the image's values has no rule")
        if kwargs.get("out") is not None:
            raise InputError(f"{where}: {name}(out=...) writes into another tensor; use the returned value")
        inplace = (base.endswith("_") and not base.startswith("__")) or base.startswith("__i")
        if inplace or kwargs.get("inplace") or (len(args) > 2 and base in {"relu", "hardtanh", "elu", "leaky_relu"}
                                                and args[-1] is True):
            self._check_alias(tensors[variable[0]], where, name)

    def _record(self, call: Call) -> None:
        """The call's nodes (one per floating output; integer outputs, such as indices, are marked discrete)."""
        out, where, base = call.out, self.stack[-1], call.name.rsplit(".", 1)[-1]
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        first = outs[0] if isinstance(outs[0], torch.Tensor) else None
        call.result, call.out = out, out if first is None else first
        inputs = tuple(self.node_of(call.tensors[i]) for i in call.variable)
        try:
            rule = rule_for(call, self.unit_for(first if first is not None else call.tensors[call.variable[0]]))
        except NoRule as err:
            if not self.inside:
                raise NoRule(
                    f"{where}: {err}; build the network from layers robustsim bounds (docs/certify.md lists them) "
                    "or give the module a proven `lipschitz_bound`"
                ) from None
            rule = None  # inside a declared leaf: its constant is declared; this call's rounding is assumed
        except InputError as err:  # not a fixed function of one image (batch statistics, randomness)
            raise InputError(f"{where}: {err}") from None
        order = None
        if base in ("max", "min", "amax", "amin") and len(call.variable) == 1 and not (
            len(call.args) > 1 and isinstance(call.args[1], torch.Tensor)
        ):
            order = (inputs[0], repr(call.arg(1, "dim")), base.removeprefix("a"))
        first_index = len(self.nodes)
        for k, o in enumerate(outs):
            if not isinstance(o, torch.Tensor):
                continue
            if k > 0 and not o.is_floating_point():  # indices of sort / max / pooling
                self.discrete.add(id(o))
                self._keep.append(o)
                self.of.pop(id(o), None)
                continue
            node = Node(len(self.nodes), call.name, where, inputs, o, rule, self.inside[-1] if self.inside else None,
                        order=order if k == 0 else None, inputs_tensors=tuple(call.tensors[i] for i in call.variable),
                        call=call, first=first_index)
            if rule is None:
                node.kind = "assumed"
            self.add(node, o)

    @staticmethod
    def _random_dropout(args: tuple, kwargs: dict, base: str) -> bool:
        if base == "rrelu":
            training = kwargs.get("training", args[3] if len(args) > 3 else False)
            return bool(training)
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        return bool(training) and float(p) > 0

    def _check_alias(self, t: torch.Tensor, where: str, name: str) -> None:
        ptr = t.untyped_storage().data_ptr()
        for _, kept in self.of.values():
            if kept is not t and kept.untyped_storage().data_ptr() == ptr:
                raise InputError(
                    f"{where}: {name} writes in place into a tensor that shares memory with another recorded one "
                    "(a view); use the out-of-place form (inplace=False)"
                )

    # -- leaves
    def run_leaf(self, module: nn.Module, kind: str, args: tuple, kwargs: dict) -> Any:
        x = args[0] if args else None
        src = self.node_of(x)
        forward = type(module).forward
        if src is None:  # a leaf on constants: nothing of the image in it
            return forward(module, *args, **kwargs)
        where = self.paths.get(id(module), type(module).__name__)
        if len([a for a in _flat(args) + _flat(kwargs.values()) if self.node_of(a) is not None]) != 1:
            raise InputError(f"{where} ({type(module).__name__}) takes the image in more than its first argument")
        if kind == "sealed":
            self.sealed += 1
            try:
                out = forward(module, *args, **kwargs)
            finally:
                self.sealed -= 1
            node = Node(len(self.nodes), type(module).__name__, where, (src,), out, None,
                        self.inside[-1] if self.inside else None, module=module, kind="sealed",
                        inputs_tensors=(x,))
            self.add(node, out)
            return out
        node = Node(len(self.nodes), type(module).__name__, where, (src,), x, None,
                    self.inside[-1] if self.inside else None, module=module, kind="declared", inputs_tensors=(x,),
                    declared=self.declared if module is self.net else None)
        self.nodes.append(node)
        self.inside.append(node.index)
        try:
            out = forward(module, *args, **kwargs)
        finally:
            self.inside.pop()
        if not isinstance(out, torch.Tensor):
            raise InputError(f"{where} ({type(module).__name__}) declares a bound but returns {type(out).__name__}")
        node.out = out
        self.of[id(out)] = (node.index, out)
        return out


def replay(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The recorded graph evaluated at another input ``x`` of the same shape: the function robustsim analysed (every
    constant as recorded, every call on the image's values again, each proven leaf by its class's forward)."""
    values: dict[int, Any] = {id(graph.x): x}

    def sub(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return values.get(id(a), a)
        if isinstance(a, (list, tuple)):
            return type(a)(sub(v) for v in a)
        return a

    seen: set[int] = set()
    with torch.no_grad():
        for node in graph.nodes:
            if node.kind == "declared":
                continue  # its inner calls are replayed one by one
            if node.kind == "sealed":
                values[id(node.out)] = type(node.module).forward(node.module, sub(node.inputs_tensors[0]))
                continue
            call = node.call
            if call is None or id(call) in seen:
                continue
            seen.add(id(call))
            got = call.func(*sub(call.args), **{k: sub(v) for k, v in call.kwargs.items()})
            olds = call.result if isinstance(call.result, (tuple, list)) else (call.result,)
            news = got if isinstance(got, (tuple, list)) else (got,)
            for old, new in zip(olds, news, strict=False):
                if isinstance(old, torch.Tensor):
                    values[id(old)] = new
    return values[id(graph.nodes[graph.output].out)]


@contextlib.contextmanager
def _leaf_forwards(net: nn.Module, rec: _Recorder) -> Iterator[None]:
    """Route each leaf's call through the recorder (an instance attribute for the duration, removed after)."""
    leaves: list[nn.Module] = []
    hooks = module_hooks()

    def visit(m: nn.Module, path: str) -> None:
        kind = "declared" if m is net and rec.declared is not None else _leaf_kind(m)
        if kind is not None:
            _check_own_forward(m, path)
            inner = [c for c in m.modules() if c is not m]
            if hooks and inner:
                raise InputError(
                    f"global module hooks ({', '.join(hooks)}) run inside {path} ({type(m).__name__}), whose bound "
                    "is proven for its own forward; remove them (torch.nn.modules.module hooks) before certifying"
                )
            leaves.append(m)
            m.__dict__["forward"] = lambda *a, _m=m, _k=kind, **k: rec.run_leaf(_m, _k, a, k)
            return
        for name, c in m.named_children():
            visit(c, f"{path}.{name}")

    try:
        visit(net, "net")
        yield
    finally:
        for m in leaves:
            m.__dict__.pop("forward", None)


def _refuse_compiled(net: nn.Module) -> None:
    for name, m in net.named_modules():
        where = f"net.{name}" if name else "net"
        if type(m).__name__ == "OptimizedModule":
            raise InputError(
                f"{where} is a torch.compile'd module, whose calls robustsim cannot see; certify its "
                f"original: {where}._orig_mod"
            )
        if isinstance(m, torch.jit.ScriptModule):
            raise InputError(f"{where} is a TorchScript module, whose calls robustsim cannot see; certify the "
                             "nn.Module it was scripted from")


def record(net: nn.Module, x: torch.Tensor, unit_for: Any, declared: float | None = None) -> Graph:
    """Run ``net(x)`` once, recording the calls on x's values (module docstring); ``unit_for(tensor)`` gives the unit
    roundoff of arithmetic producing that tensor; ``declared``: a constant the user declared for the whole network
    (it is then one declared leaf). The network's tensors must not change during the call."""
    from torch.nn.modules import module as m

    _refuse_compiled(net)
    sealed = [m for m in net.modules() if _leaf_kind(m) == "sealed"]  # these answer for their own state
    own = {id(t) for m in sealed for t in [*m.parameters(), *m.buffers()]}
    state = [(n, t, t._version) for n, t in [*net.named_parameters(), *net.named_buffers()] if id(t) not in own]
    rec = _Recorder(net, x, unit_for, declared)
    pre = m.register_module_forward_pre_hook(observer(lambda module, args: rec.enter(module, args)))
    post = m.register_module_forward_hook(observer(lambda module, args, out: rec.leave(module, args, out)))
    try:
        with _leaf_forwards(net, rec), rec, torch.no_grad():
            out = net(x)
    finally:
        pre.remove()
        post.remove()
    changed = [n for n, t, v in state if t._version != v]
    if changed:
        owner = changed[0].split(".parametrizations.")[0]
        fix = (
            f"freeze the weight it applies (torch.nn.utils.parametrize.remove_parametrizations(net.{owner}, "
            "'weight'))" if ".parametrizations." in changed[0] else "call .eval()"
        )
        raise InputError(
            f"the forward updates the network's own tensors (net.{changed[0]}), so every call applies other "
            f"weights (batch statistics, a power iteration that moves at each call); {fix} before certifying"
        )
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the network returns {type(out).__name__}, not one tensor; certify a network that does")
    index = rec.node_of(out)
    if index is None or index < 0:
        raise InputError(
            "the network's output does not come from its input through calls robustsim saw (TorchScript, a C++ "
            "extension or numpy inside the forward?); certify a network of plain PyTorch modules"
        )
    return Graph(rec.nodes, index, x)

