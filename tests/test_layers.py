"""The package's layers: every import points down (or sideways within a layer), none is hidden.

LAYERS is the order the README's layout section gives. A module that is in no layer fails the
test, so a new module must be placed; an import from a lower layer to a higher one fails it, and
so does a function-local import of a flowsdf module outside the command line (whose subcommands
import their work lazily so that `flowsdf --help` stays fast): such an import is how a cycle hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowsdf"

# Bottom to top. An entry is a module ("flowsdf.flow") or a folder ("flowsdf.models", all its modules).
LAYERS = [
    ["flowsdf.errors"],
    ["flowsdf.device", "flowsdf.schema", "flowsdf.fields", "flowsdf.checkpoint", "flowsdf.provenance"],
    ["flowsdf.flow", "flowsdf.models"],
    ["flowsdf.fast_sampler", "flowsdf.consistency"],
    ["flowsdf.render"],
    ["flowsdf.mesh"],
    ["flowsdf.data"],
    ["flowsdf.text"],
    ["flowsdf.config", "flowsdf.overrides"],
    ["flowsdf.build"],
    ["flowsdf.runs"],
    ["flowsdf.loading"],
    ["flowsdf.refine", "flowsdf.metrics"],
    ["flowsdf.figures"],
    ["flowsdf.train"],
    ["flowsdf.pipeline"],
    ["flowsdf.reconstruct", "flowsdf.generate"],
    ["flowsdf.speed"],
    ["flowsdf.evaluate"],
    ["flowsdf.reproduce"],
    ["flowsdf.viewer"],
    ["flowsdf.cli", "flowsdf.__main__"],
]
LAZY_OK = ("flowsdf.cli", "flowsdf.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int | None:
    for i, entries in enumerate(LAYERS):
        if any(name == e or name.startswith(e + ".") for e in entries):
            return i
    return None


def flowsdf_imports(tree: ast.Module, name: str) -> list[tuple[str, int, bool]]:
    """(imported flowsdf module, line, at module level?) for every import in a module."""
    top = {id(node) for node in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` or try at module level count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flowsdf"):
            for alias in node.names:  # "from flowsdf.data import shapes" imports the module flowsdf.data.shapes
                sub = f"{node.module}.{alias.name}"
                target = sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module
                found.append((target, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("flowsdf")]
    return found


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert [name for name in modules() if name != "flowsdf" and layer_of(name) is None] == []


def test_imports_point_to_the_same_or_a_lower_layer():
    upward = []
    for name, tree in modules().items():
        own = layer_of(name)
        for target, line, _ in flowsdf_imports(tree, name):
            other = layer_of(target)
            if other is not None and own is not None and other > own:
                upward.append(f"{name}:{line} imports {target} (layer {other} > {own})")
    assert upward == []


def test_no_function_local_imports_of_the_package_outside_the_command_line():
    hidden = [f"{name}:{line} imports {target}" for name, tree in modules().items() if not name.startswith(LAZY_OK)
              for target, line, top in flowsdf_imports(tree, name) if not top]
    assert hidden == []


def test_the_readme_layout_lists_every_folder_and_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Package layout"):]
    layout = layout[: layout.index("\n## ", 4)]
    missing = []
    for name in modules():
        if name == "flowsdf" or name.endswith("__main__"):
            continue
        rel = name.removeprefix("flowsdf.").split(".")
        folder = (PACKAGE / rel[0]).is_dir()
        shown = f"`{rel[0]}/`" if folder else f"`{rel[0]}.py`"
        if folder and len(rel) > 1:
            shown = f"`{rel[-1]}`"  # a folder's modules are named in its row
        if shown not in layout:
            missing.append(name)
    assert missing == []
