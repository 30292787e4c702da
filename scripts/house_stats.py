"""The size and shape of the product code: lines per package, modules over 400 lines, functions over 60 code lines,
import cycles between product modules (imports inside functions included), and names one module re-exports from
another. Run it before and after a restructuring and compare.

    python scripts/house_stats.py               # a markdown table
    python scripts/house_stats.py --json        # the same as JSON
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ("train", "export", "runtime", "benchmarks", "scripts")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the product packages."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.AST, known: dict) -> list[str]:
    """The product modules an import statement names (``from a import b`` may name module ``a.b``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if isinstance(node, ast.ImportFrom):
        base = package[: len(package) - node.level + 1] if node.level else []
        name = ".".join(base + ([node.module] if node.module else []))
        names = [name] + [f"{name}.{a.name}" for a in node.names]
    else:
        names = [a.name for a in node.names]
    return [n for n in names if n in known]


def _code_lines(node) -> int:
    """A function's lines from its first statement after the docstring to its end."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        start = first.end_lineno + 1
    else:
        start = first.lineno
    return node.end_lineno - start + 1


def _type_checking_nodes(tree: ast.AST) -> set:
    """Nodes under ``if TYPE_CHECKING:``, whose imports never run."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(sub) for sub in ast.walk(node))
    return skip


def _reexports(module: str, tree: ast.Module, known: dict) -> list[str]:
    """Names a module imports from another product module and lists in its ``__all__``: a second address."""
    exported = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                exported |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
            imported |= {a.asname or a.name for a in node.names}
    return sorted(f"{module}.{n}" for n in exported & imported)


def measure(root: Path, packages=PACKAGES) -> dict:
    """Every number this script reports, for the tree at ``root``."""
    known = module_files(root, packages)
    lines, big_modules, big_functions, reexports = defaultdict(int), [], [], []
    edges = {m: set() for m in known}
    for module, path in known.items():
        source = path.read_text()
        count = source.count("\n")
        lines[module.split(".")[0]] += count
        if count > MAX_MODULE_LINES:
            big_modules.append(f"{path.relative_to(root)} ({count})")
        tree = ast.parse(source)
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                for target in _imported(module, path, node, known):
                    related = module.startswith(target + ".") or target.startswith(module + ".")
                    if target != module and not related:
                        edges[module].add(target)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                big_functions.append(f"{path.relative_to(root)}:{node.name} ({_code_lines(node)})")
        reexports += _reexports(module, tree, known)
    return {"lines": dict(lines), "total_lines": sum(lines.values()), "modules": len(known),
            "big_modules": big_modules, "big_functions": big_functions, "cycles": cycles(edges),
            "reexports": reexports}


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def markdown(stats: dict) -> str:
    """The numbers as a short markdown report."""
    rows = [f"| {pkg} | {n} |" for pkg, n in sorted(stats["lines"].items())]
    out = ["| package | lines |", "|---|---|", *rows, f"| **total** | **{stats['total_lines']}** |", "",
           f"- modules: {stats['modules']}",
           f"- modules over {MAX_MODULE_LINES} lines: {len(stats['big_modules'])} {stats['big_modules']}",
           f"- functions over {MAX_FUNCTION_LINES} code lines: {len(stats['big_functions'])} {stats['big_functions']}",
           f"- import cycles (imports inside functions included): {len(stats['cycles'])} "
           + "; ".join(" <-> ".join(c) for c in stats["cycles"]),
           f"- names a module imports from another and lists in its __all__ (second addresses): {len(stats['reexports'])}"]
    return "\n".join(out)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/house_stats.py", description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                   help="the checkout to measure (default: this one)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    root = Path(args.root)
    if not (root / "runtime").is_dir():
        print(f"error: {root} is not a cnn-bilstm-deploy checkout (no runtime/ folder)", file=sys.stderr)
        return 2
    stats = measure(root)
    print(json.dumps(stats, indent=2) if args.json else markdown(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
