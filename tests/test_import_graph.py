"""The import graph of xytok/: no cycles, and no lower layer imports a higher one.

Every import statement counts, also those inside functions (a lazy import still ties the two
modules together). Layers, lowest first (docs/CONTRACTS.md, "Package layers"):

  0 base     stand-alone helpers: front end, audio I/O, tables, codes I/O, checkpoint files, hub
  1 nn       model building blocks
  2 model    codec (+ pretrained / onnx), codecs/ adapters, data, asr, gan, losses, token shards,
             the `xytok` package
  3 train / eval
  4 entry    bin/* and cli.py (bin's subcommands share cli.py's argument/model helpers, and cli.py
             loads them by name at run time, so the two form one layer)

A module may import its own layer or lower ones.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "xytok"

# Most specific prefix wins. Every module of xytok/ must be covered (checked below).
LAYERS = {
    "xytok.frontend": 0, "xytok.audio": 0, "xytok.data.table": 0, "xytok.io_codes": 0,
    "xytok.checkpoint": 0, "xytok.hub": 0, "xytok.progress": 0, "xytok.onnx_runtime": 0,
    "xytok.nn": 1,
    "xytok": 2,  # the package (__init__) and the model-level modules: codec, pretrained, losses, ...
    "xytok.data": 2, "xytok.asr": 2, "xytok.gan": 2, "xytok.codecs": 2,
    "xytok.train": 3, "xytok.eval": 3,
    "xytok.bin": 4, "xytok.cli": 4, "xytok.__main__": 4,
}
LAYER_NAMES = ["base", "nn", "model", "train/eval", "entry"]


def modules() -> dict:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict:
    """{module: {imported xytok module: first line}} from the AST of every file."""
    mods = modules()
    graph = {}
    for mod, path in mods.items():
        edges = {}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                dep = _resolve(t, mods) if t.startswith("xytok") else None
                if dep and dep != mod:
                    edges.setdefault(dep, node.lineno)
        graph[mod] = edges
    return graph


def layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[best]


def find_cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def test_graph_sees_imports():
    """The parser finds real edges (top-level, lazy and `from pkg import sub`)."""
    g = import_graph()
    assert "xytok.nn.rvq" in g["xytok.codec"]
    assert "xytok.train.checkpointing" in g["xytok.train.trainer"]  # from xytok.train import checkpointing
    assert "xytok.codec" in g["xytok.train.stage1"]  # imported inside a function
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_lower_layers_do_not_import_higher_ones():
    g = import_graph()
    bad = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {d} ({LAYER_NAMES[layer(d)]}) at line {line}"
           for m, deps in sorted(g.items()) for d, line in sorted(deps.items()) if layer(d) > layer(m)]
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer():
    # a new top-level folder must be placed in LAYERS deliberately, not fall into "xytok" by accident
    folders = {f"xytok.{p.name}" for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    missing = sorted(folders - set(LAYERS))
    assert not missing, f"package(s) {missing} have no entry in LAYERS: place them in a layer"
