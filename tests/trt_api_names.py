"""Every TensorRT name the runtime uses, collected from its source, and looked up in the real TensorRT modules.

The collector reads the source (AST), so a use added tomorrow is found without anyone listing it:

* attribute chains on the TensorRT module: ``tm.trt.X``, ``trt.X.Y`` where ``trt`` is bound to ``<anything>.trt`` (a
  :class:`runtime.trt_compat.TrtModule`'s module), a parameter named ``trt``, ``importlib.import_module(...)``, or a
  chain of it (``dt = trt.DataType``); ``hasattr``/``getattr`` with a constant name count too, as *optional* names
  (a version probe may be absent);
* attributes of TensorRT objects: the type of ``trt.Runtime(...)`` is ``Runtime``, and the type a method returns is
  read from the real module's own signature (``deserialize_cuda_engine(...) -> ...ICudaEngine``), through local
  variables, ``self.<attr>`` and the return values of the module's own functions and methods; an annotation that
  names a TensorRT class (``engine: ICudaEngine`` on a parameter or an assignment) types what it annotates, so an
  object handed from one module to another (a loaded engine to its runner) keeps its type;
* per flavour: a statement under ``if tm.is_rtx`` (``not``, ``and``, ``or``, ``tm.is_lean``, ``tm.flavour == "..."``
  and early returns included) runs only on the flavours the condition allows, and an object made there carries
  those flavours to every later use.

``python tests/trt_api_names.py`` prints the table: each name, the flavours that use it, and whether each installed
real module has it.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAVOURS = ("tensorrt", "tensorrt_rtx", "tensorrt_lean_bindings")
ALL = frozenset(FLAVOURS)
_FLAVOUR_TESTS = {"is_rtx": "tensorrt_rtx", "is_lean": "tensorrt_lean_bindings"}


@dataclass(frozen=True)
class Use:
    """One use of a TensorRT name: "IExecutionContext.set_input_shape", "Logger.WARNING", "Runtime"."""

    name: str
    flavours: frozenset
    where: str
    optional: bool = False


@dataclass(frozen=True)
class _T:
    """What an expression is: the module (``chain`` below it) or an instance of TensorRT class ``cls``."""

    chain: tuple | None = None
    cls: str | None = None
    flavours: frozenset = ALL


@dataclass(frozen=True)
class _Member:
    """An attribute of a TensorRT object (a method, when called: its return type comes from the real module)."""

    cls: str
    name: str
    flavours: frozenset


def real_modules() -> dict:
    """The installed real flavours: {flavour: module}."""
    out = {}
    for name in FLAVOURS:
        try:
            out[name] = importlib.import_module(name)
        except ImportError:
            pass
    return out


def lookup(module, name: str):
    """The object ``name`` ("ICudaEngine.num_io_tensors") names in ``module``, or None. A keyword argument
    ("ICudaEngine.create_execution_context(runtime_config=)") must appear in the method's signature."""
    keyword = re.fullmatch(r"(.+)\((\w+)=\)", name)
    if keyword:
        method = lookup(module, keyword.group(1))
        return method if f"{keyword.group(2)}:" in (getattr(method, "__doc__", None) or "") else None
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class Collector:
    """Collects :class:`Use` records from Python sources; ``modules`` (real TensorRT modules) give return types."""

    def __init__(self, modules: dict) -> None:
        self.modules = modules
        self.uses: list = []

    # --- types from the real modules ------------------------------------------------------------------------------
    def _is_class(self, name: str) -> bool:
        return any(isinstance(getattr(m, name, None), type) for m in self.modules.values())

    def _returns(self, cls: str, method: str):
        for m in self.modules.values():
            doc = getattr(lookup(m, f"{cls}.{method}"), "__doc__", None) or ""
            for ret in re.findall(r"->\s*([\w.:]+)", doc):
                last = re.split(r"\.|::", ret)[-1]
                if self._is_class(last):
                    return last
        return None

    # --- files ----------------------------------------------------------------------------------------------------
    def collect(self, source: str, filename: str) -> list:
        """All uses in one source file (a few passes, so types flow between functions), recorded on the last."""
        tree = ast.parse(source, filename)
        self._file, self._self_types, self._fn_returns, self._record = filename, {}, {}, False
        for _ in range(4):
            self._module(tree)
        self._record, start = True, len(self.uses)
        self._module(tree)
        return self.uses[start:]

    def _module(self, tree) -> None:
        self._block(tree.body, ALL, {}, None)

    # --- statements -----------------------------------------------------------------------------------------------
    def _block(self, stmts, fl, env, fn_name) -> None:
        for stmt in stmts:
            fl = self._stmt(stmt, fl, env, fn_name)

    def _stmt(self, stmt, fl, env, fn_name):
        """Walk one statement; returns the flavours the statements after it run on."""
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = dict(env)  # closures see the enclosing names (make_logger's class sees ``trt``)
            for arg in stmt.args.args + stmt.args.kwonlyargs:
                inner[arg.arg] = _T(chain=()) if arg.arg == "trt" else self._annotated(arg.annotation, fl)
            self._block(stmt.body, fl, inner, stmt.name)
            return fl
        if isinstance(stmt, ast.ClassDef):
            for base in stmt.bases:
                self._expr(base, fl, env)
            self._block(stmt.body, fl, dict(env), None)
            return fl
        if isinstance(stmt, ast.If):
            may_true, may_false = self._condition(stmt.test)
            self._expr(stmt.test, fl, env)
            self._block(stmt.body, fl & may_true, env, fn_name)
            self._block(stmt.orelse, fl & may_false, env, fn_name)
            if stmt.body and isinstance(stmt.body[-1], (ast.Return, ast.Raise)):
                return fl & may_false  # an early return: what follows runs only where the condition may be false
            if stmt.orelse and isinstance(stmt.orelse[-1], (ast.Return, ast.Raise)):
                return fl & may_true
            return fl
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            value = stmt.value
            t = self._expr(value, fl, env) if value is not None else None
            if isinstance(stmt, ast.AnnAssign) and not isinstance(t, _T):
                t = self._annotated(stmt.annotation, fl)
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                self._bind(target, value, t, fl, env)
            return fl
        if isinstance(stmt, ast.Return):
            t = self._expr(stmt.value, fl, env) if stmt.value is not None else None
            if fn_name is not None:
                self._fn_returns.setdefault(fn_name, set()).add(
                    _T(t.chain, t.cls, t.flavours & fl) if isinstance(t, _T) else None)
            return fl
        for _field, value in ast.iter_fields(stmt):  # for, while, with, try, expressions: same flavours throughout
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self._block(value, fl, env, fn_name)
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, ast.excepthandler):
                        self._block(v.body, fl, env, fn_name)
                    elif isinstance(v, ast.AST):
                        self._expr(v, fl, env)
            elif isinstance(value, ast.AST):
                self._expr(value, fl, env)
        return fl

    def _annotated(self, annotation, fl):
        """The type an annotation names when it is a TensorRT class (``ICudaEngine``, ``trt.ICudaEngine`` or the
        same as a string), else None."""
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            name = annotation.value
        elif isinstance(annotation, (ast.Name, ast.Attribute)):
            name = ast.unparse(annotation)
        else:
            return None
        cls = name.split(".")[-1]
        return _T(cls=cls, flavours=fl) if self._is_class(cls) else None

    def _bind(self, target, value, t, fl, env) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for tgt, val in zip(target.elts, value.elts, strict=True):
                self._bind(tgt, val, self._expr(val, fl, env, record=False), fl, env)
            return
        typed = _T(t.chain, t.cls, t.flavours & fl) if isinstance(t, _T) else None
        if isinstance(target, ast.Name):
            if typed is not None or target.id not in env:  # ``x = None`` on an error path keeps what x may be
                env[target.id] = typed
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            if typed is not None:  # flavours add up over every assignment (``= None`` elsewhere types nothing)
                old = self._self_types.get(target.attr)
                self._self_types[target.attr] = typed if old is None else _T(typed.chain, typed.cls,
                                                                             old.flavours | typed.flavours)
        else:
            self._expr(target, fl, env)  # ``config.cuda_graph_strategy = ...`` uses a TensorRT name too

    def _condition(self, test) -> tuple:
        """(flavours where ``test`` may be true, flavours where it may be false)."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            t, f = self._condition(test.operand)
            return f, t
        if isinstance(test, ast.BoolOp):
            parts = [self._condition(v) for v in test.values]
            ts, fs = [p[0] for p in parts], [p[1] for p in parts]
            if isinstance(test.op, ast.And):
                return frozenset.intersection(*ts), frozenset.union(*fs)
            return frozenset.union(*ts), frozenset.intersection(*fs)
        if isinstance(test, ast.Attribute) and test.attr in _FLAVOUR_TESTS:
            one = frozenset({_FLAVOUR_TESTS[test.attr]})
            return one, ALL - one
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Attribute) and test.left.attr == "flavour"
                and len(test.ops) == 1 and isinstance(test.comparators[0], ast.Constant)):
            one = frozenset({test.comparators[0].value}) & ALL
            if isinstance(test.ops[0], ast.Eq):
                return one, ALL - one
            if isinstance(test.ops[0], ast.NotEq):
                return ALL - one, one
        return ALL, ALL

    # --- expressions ----------------------------------------------------------------------------------------------
    def _use(self, name: str, flavours, node, optional: bool = False) -> None:
        if self._record and flavours:
            self.uses.append(Use(name, frozenset(flavours), f"{self._file}:{node.lineno}", optional))

    def _expr(self, node, fl, env, record: bool = True):
        """The type of ``node`` (a :class:`_T` or None), recording the TensorRT names it uses."""
        saved, self._record = self._record, self._record and record
        try:
            return self._type(node, fl, env)
        finally:
            self._record = saved

    def _type(self, node, fl, env):
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self._self_types.get(node.attr)
            if node.attr == "trt":  # TrtModule.trt: the imported flavour
                self._type(node.value, fl, env)
                return _T(chain=())
            return self._attribute(self._type(node.value, fl, env), node.attr, fl, node)
        if isinstance(node, ast.Call):
            return self._call(node, fl, env)
        if isinstance(node, ast.Lambda):
            self._type(node.body, fl, dict(env))
            return None
        for child in ast.iter_child_nodes(node):
            self._type(child, fl, env)
        return None

    def _attribute(self, t, attr, fl, node, optional: bool = False):
        if not isinstance(t, _T):
            return None
        if t.chain is not None:
            chain = t.chain + (attr,)
            self._use(".".join(chain), t.flavours & fl, node, optional)
            return _T(chain=chain, flavours=t.flavours & fl)
        if t.cls is None:
            return None
        self._use(f"{t.cls}.{attr}", t.flavours & fl, node, optional)
        return _Member(t.cls, attr, t.flavours & fl)

    def _call(self, node, fl, env):
        for arg in node.args + [k.value for k in node.keywords]:
            self._type(arg, fl, env)
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            optional = func.id == "hasattr" or len(node.args) > 2
            t = self._type(node.args[0], fl, env)
            got = self._attribute(t, node.args[1].value, fl, node, optional)
            return got if isinstance(got, _T) else None
        if isinstance(func, ast.Attribute) and func.attr == "import_module" and \
                isinstance(func.value, ast.Name) and func.value.id == "importlib":
            return _T(chain=())
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" \
                and func.attr not in self._self_types:
            return self._function_result(func.attr)
        if isinstance(func, ast.Name):
            return self._function_result(func.id)
        t = self._type(func, fl, env)
        if isinstance(t, _T) and t.chain and self._is_class(t.chain[-1]):
            return _T(cls=t.chain[-1], flavours=t.flavours)  # trt.Runtime(logger): a Runtime
        if isinstance(t, _Member):
            for k in node.keywords:
                if k.arg:
                    self._use(f"{t.cls}.{t.name}({k.arg}=)", t.flavours & fl, node)
            ret = self._returns(t.cls, t.name)
            return _T(cls=ret, flavours=t.flavours & fl) if ret else None
        return None

    def _function_result(self, name: str):
        results = self._fn_returns.get(name) or set()
        typed = {(r.chain, r.cls) for r in results if r is not None}
        if len(typed) != 1:
            return None
        chain, cls = typed.pop()
        return _T(chain, cls, frozenset().union(*(r.flavours for r in results if r is not None)))


def collect_runtime_uses(modules: dict, root: Path = REPO) -> list:
    """The uses in every module of the ``runtime`` package (its TensorRT backend and the seam, and any newcomer)."""
    collector = Collector(modules)
    uses = []
    for path in sorted((root / "runtime").rglob("*.py")):
        uses += collector.collect(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    return uses


def by_name(uses: list) -> dict:
    """{name: (flavours that use it, optional everywhere?, first place)}."""
    out: dict = {}
    for u in uses:
        fl, optional, where = out.get(u.name, (frozenset(), True, u.where))
        out[u.name] = (fl | u.flavours, optional and u.optional, where)
    return out


def missing(uses: list, modules: dict) -> list:
    """(name, flavour, where) for every required name that a flavour which uses it lacks, installed flavours only."""
    out = []
    for name, (fl, optional, where) in sorted(by_name(uses).items()):
        for flavour in sorted(fl):
            if flavour in modules and not optional and lookup(modules[flavour], name) is None:
                out.append((name, flavour, where))
    return out


def table(uses: list, modules: dict) -> list:
    """Lines: name, then per flavour "+" (present), "-" (absent), "." (not used there), "?" (not installed)."""
    lines = [f"{'name':<58} " + " ".join(f"{f:<22}" for f in FLAVOURS)]
    for name, (fl, optional, _where) in sorted(by_name(uses).items()):
        cells = []
        for f in FLAVOURS:
            if f not in fl:
                cells.append(".")
            elif f not in modules:
                cells.append("?")
            else:
                cells.append("+" if lookup(modules[f], name) is not None else ("-" + (" (optional)" if optional
                                                                                    else "")))
        lines.append(f"{name:<58} " + " ".join(f"{c:<22}" for c in cells))
    return lines


if __name__ == "__main__":
    mods = real_modules()
    print("\n".join(table(collect_runtime_uses(mods), mods)))
    sys.exit(1 if missing(collect_runtime_uses(mods), mods) else 0)
