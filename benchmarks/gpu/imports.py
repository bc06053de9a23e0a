"""Static import closure of the carried packages: is every module they import there?

Every `import` statement of every .py file of the root packages is read (AST, no code
runs), and so, recursively, of every carried package they import. Each imported
top-level name is then one of: carried (in the site folder), on the image (KINDS.md's
list), the standard library, excluded on purpose (`image.EXCLUDED`), or a gap.

How a name is imported decides what a gap means. From the entry modules (the servers'
own, and the modules vLLM loads by name on a GPU: the CUDA platform, the GPU worker, Qwen2,
AF3, FlashAttention, fp8) only imports that run when a module is imported are followed:
at module level, not under `if TYPE_CHECKING`, not in a `try` that catches ImportError.
A gap reached that way fails the import: a hard gap. Any other gap is soft: imported in a
function, under such a `try`, or only for type checking, so it fails only on the code path
that needs it, which the report names.
"""

import ast
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.gpu import image

# The strongest way a module is imported, strongest first. CONDITIONAL: at module level
# under an `if` decided at run time (a flag, a feature probe).
MODULE, CONDITIONAL = "module-level", "conditional"
GUARDED, LAZY, TYPING = "guarded", "lazy", "type-checking"
_RANK = {MODULE: 0, CONDITIONAL: 1, GUARDED: 2, LAZY: 3, TYPING: 4}

# What `sys.version_info`, `sys.platform` and `os.name` are on the image.
_IMAGE_VALUES = {
    "sys.version_info": (3, 12, 3, "final", 0),
    "sys.platform": "linux",
    "os.name": "posix",
    "sys.implementation.name": "cpython",
}


def _evaluate(test: ast.expr) -> bool | None:
    """The value of an `if` test that reads only the interpreter's version and platform
    (as on the image) and constants; None for anything else."""

    class Substitute(ast.NodeTransformer):
        ok = True

        def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
            name = ast.unparse(node)
            if name in _IMAGE_VALUES:
                return ast.Constant(_IMAGE_VALUES[name])
            self.ok = False
            return node

        def visit_Name(self, node: ast.Name) -> ast.AST:
            self.ok = False
            return node

        def visit_Call(self, node: ast.Call) -> ast.AST:
            self.ok = False
            return node

    substitute = Substitute()
    expression = substitute.visit(ast.Expression(ast.parse(ast.unparse(test), mode="eval").body))
    if not substitute.ok:
        return None
    try:
        return bool(eval(compile(ast.fix_missing_locations(expression), "<if>", "eval"), {}))
    except Exception:
        return None


# Modules of the 3.11 standard library (this machine) that 3.12 (the image) removed.
_REMOVED_IN_312 = {"asynchat", "asyncore", "distutils", "imp", "smtpd"}
STDLIB = (set(sys.stdlib_module_names) - _REMOVED_IN_312) | {"__future__"}

# What vLLM loads by name (importlib, the model registry, the platform plugin) on the
# paths these servers take on one NVIDIA GPU, with our model, vLLM's built-in AF3, and
# `--quantization fp8`: followed like the servers' own modules.
ENTRY_MODULES = [
    "vllm.entrypoints.openai.api_server",
    "vllm.entrypoints.cli.main",
    "vllm.platforms.cuda",
    "vllm.v1.engine.core",
    "vllm.v1.engine.async_llm",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
    "vllm.v1.attention.backends.flash_attn",
    "vllm.model_executor.models.qwen2",
    "vllm.model_executor.models.audioflamingo3",
    "vllm.model_executor.models.whisper",
    "vllm.model_executor.model_loader.default_loader",
    "vllm.model_executor.layers.quantization.fp8",
    "vllm.compilation.backends",
    "vllm.distributed.device_communicators.cuda_communicator",
    "vllm.device_allocator.cumem",
    "vllm.benchmarks.serve",
]
# Our own packages: every module of them is an entry.
OWN_PACKAGES = ["af3_serve", "af3_model_executor", "af3_bench"]

# Import names of the distributions in image.EXCLUDED.
EXCLUDED_IMPORTS = {
    "torchcodec": "torchcodec",
    "flashinfer": "flashinfer-python",
    "flashinfer_cubin": "flashinfer-cubin",
    "flashinfer_jit_cache": "flashinfer-jit-cache",
    "tvm_ffi": "apache-tvm-ffi",
    "tilelang": "tilelang",
    "cutlass": "nvidia-cutlass-dsl",
    "cutlass_dsl": "nvidia-cutlass-dsl",
    "quack": "quack-kernels",
    "tokenspeed_mla": "tokenspeed-mla",
    "humming": "humming-kernels",
    "PyNvVideoCodec": "pynvvideocodec",
    "fastsafetensors": "fastsafetensors",
    "instanttensor": "instanttensor",
    "cudnn": "nvidia-cudnn-frontend",
}


@dataclass
class Use:
    kind: str
    where: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str) -> None:
        """`where` lists places of the strongest kind seen."""
        if _RANK[kind] < _RANK[self.kind]:
            self.kind, self.where = kind, []
        if _RANK[kind] == _RANK[self.kind] and len(self.where) < 5 and where not in self.where:
            self.where.append(where)


def module_index(site: Path) -> dict[str, Path]:
    """Dotted module name -> file, for .py files, compiled extensions and folders (regular
    and namespace packages) under `site`."""
    index: dict[str, Path] = {}
    for path in site.rglob("*"):
        rel = path.relative_to(site)
        if any(part.endswith((".dist-info", ".data")) or part == "bin" for part in rel.parts):
            continue
        if path.is_dir():
            if all(p.isidentifier() for p in rel.parts):
                init = path / "__init__.py"
                index[".".join(rel.parts)] = init if init.exists() else path
        elif path.suffix == ".py" and path.name != "__init__.py":
            index[".".join((*rel.parts[:-1], path.stem))] = path
        elif path.suffix == ".so":
            index[".".join((*rel.parts[:-1], path.name.split(".")[0]))] = path
    return index


class _Imports(ast.NodeVisitor):
    """(module, kind, line) for every import in one file; `from a import b` yields `a` and
    the candidate `a.b`."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str, int, bool]] = []  # name, kind, line, candidate
        self._function = self._guard = self._typing = self._condition = 0

    def _kind(self) -> str:
        if self._typing:
            return TYPING
        if self._function:
            return LAZY
        if self._guard:
            return GUARDED
        if self._condition:
            return CONDITIONAL
        return MODULE

    def _absolute(self, module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join([*base, module] if module else base)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, self._kind(), node.lineno, False))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module, node.level)
        self.found.append((base, self._kind(), node.lineno, False))
        for alias in node.names:
            if alias.name != "*":
                self.found.append((f"{base}.{alias.name}", self._kind(), node.lineno, True))

    def _function_body(self, node: ast.AST) -> None:
        self._function += 1
        self.generic_visit(node)
        self._function -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function_body

    def _visit_all(self, nodes: list[ast.AST], counter: str = "") -> None:
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)
        for child in nodes:
            self.visit(child)
        if counter:
            setattr(self, counter, getattr(self, counter) - 1)

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if "TYPE_CHECKING" in test:
            self._visit_all(node.body, "_typing")
            self._visit_all(node.orelse)
            return
        known = _evaluate(node.test)
        if known is True:
            self._visit_all(node.body)
        elif known is False:
            self._visit_all(node.orelse)
        else:  # decided at run time (a flag, a feature probe): not every import runs
            self._visit_all(node.body, "_condition")
            self._visit_all(node.orelse, "_condition")

    def visit_With(self, node: ast.With) -> None:
        # `with contextlib.suppress(ImportError):` guards like try/except ImportError.
        text = " ".join(ast.unparse(item.context_expr) for item in node.items)
        guarded = "suppress" in text and any(g in text for g in ("ImportError", "Exception"))
        self._visit_all(node.body, "_guard" if guarded else "")

    def visit_Try(self, node: ast.Try) -> None:
        caught = set()
        for handler in node.handlers:
            if handler.type is None:
                caught.add("*")
            else:
                caught.update(
                    ast.unparse(handler.type)
                    .replace("(", " ")
                    .replace(")", " ")
                    .replace(",", " ")
                    .split()
                )
        guards = {"*", "ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
        guarded = bool(caught & guards)
        self._guard += guarded
        for child in node.body:
            self.visit(child)
        self._guard -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try


def file_imports(module: str, path: Path) -> list[tuple[str, str, int, bool]]:
    if path.suffix != ".py":
        return []
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError:
        return []
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(tree)
    return visitor.found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def classify(top: str, carried_tops: set[str], image_tops: set[str]) -> str:
    if top in carried_tops:
        return "carried"
    if top in STDLIB:
        return "stdlib"
    if top in image_tops:
        return "image"
    if top in EXCLUDED_IMPORTS:
        return "excluded"
    return "gap"


def image_top_names() -> set[str]:
    names: set[str] = set()
    for dist in image.IMAGE_PACKAGES:
        names.update(image.import_names(dist))
    return names


def closure(site: Path, roots: list[str] | None = None) -> dict:
    """The report: hard gaps (an import that runs when an entry module is imported),
    soft gaps, missing internal modules, and every external top-level name by status."""
    index = module_index(site)
    carried_tops = {name.split(".")[0] for name in index}
    image_tops = image_top_names()
    roots = [*ENTRY_MODULES, *OWN_PACKAGES] if roots is None else roots
    entries = [
        name
        for name in index
        if name in roots or any(name.startswith(f"{p}.") for p in OWN_PACKAGES if p in roots)
    ]
    missing_roots = [r for r in roots if r not in index]

    cache: dict[str, list] = {}

    def imports_of(module: str) -> list:
        if module not in cache:
            cache[module] = file_imports(module, index[module]) if module in index else []
        return cache[module]

    # (A) what importing the entry modules runs.
    hard: dict[str, Use] = {}
    hard_internal: dict[str, Use] = {}
    seen: set[str] = set()
    via: dict[str, str] = {}  # module -> the module whose import brought it in

    def chain(module: str) -> str:
        links = [module]
        while links[-1] in via and len(links) < 40:
            links.append(via[links[-1]])
        return " <- ".join(links)

    queue = deque(entries)
    while queue:
        module = queue.popleft()
        if module in seen:
            continue
        seen.add(module)
        for parent in _parents(module)[:-1]:
            if parent in index and parent not in seen:
                via.setdefault(parent, module)
                queue.append(parent)
        for name, kind, line, candidate in imports_of(module):
            if kind != MODULE or not name:
                continue
            top = name.split(".")[0]
            if top in carried_tops:
                if name in index:
                    for p in _parents(name):
                        if p in index and p not in seen:
                            via.setdefault(p, module)
                            queue.append(p)
                elif not candidate:
                    use = hard_internal.setdefault(name, Use(kind))
                    use.add(kind, f"{module}:{line} (imported by {chain(module)})")
                continue
            status = classify(top, carried_tops, image_tops)
            if status in ("gap", "excluded"):
                use = hard.setdefault(top, Use(kind))
                use.add(kind, f"{module}:{line} (imported by {chain(module)})")

    # (B) every import of every file of the root packages, recursively over carried ones.
    externals: dict[str, Use] = {}
    internal_missing: dict[str, Use] = {}
    packages = deque({r.split(".")[0] for r in roots})
    done_packages: set[str] = set()
    while packages:
        package = packages.popleft()
        if package in done_packages:
            continue
        done_packages.add(package)
        for module in [m for m in index if m == package or m.startswith(f"{package}.")]:
            for name, kind, line, candidate in imports_of(module):
                if not name:
                    continue
                top = name.split(".")[0]
                if top in carried_tops:
                    if top not in done_packages:
                        packages.append(top)
                    if not candidate and name not in index:
                        internal_missing.setdefault(name, Use(kind)).add(kind, f"{module}:{line}")
                    continue
                externals.setdefault(top, Use(kind)).add(kind, f"{module}:{line}")

    by_status: dict[str, dict] = {}
    for top, use in sorted(externals.items()):
        status = classify(top, carried_tops, image_tops)
        by_status.setdefault(status, {})[top] = {"kind": use.kind, "where": use.where}
    return {
        "entry_modules": sorted(set(roots) - set(missing_roots)),
        "entry_modules_missing": missing_roots,
        "modules_imported_at_start": len(seen),
        "packages_scanned": sorted(done_packages),
        "hard_gaps": {k: {"kind": v.kind, "where": v.where} for k, v in sorted(hard.items())},
        "hard_missing_internal": {
            k: {"kind": v.kind, "where": v.where} for k, v in sorted(hard_internal.items())
        },
        "soft_missing_internal": {
            k: {"kind": v.kind, "where": v.where}
            for k, v in sorted(internal_missing.items())
            if k not in hard_internal
        },
        "externals": {
            status: (sorted(names) if status in ("stdlib", "image") else names)
            for status, names in sorted(by_status.items())
        },
        "soft_gaps": {k: v for k, v in by_status.get("gap", {}).items() if k not in hard},
    }


def summary_lines(report: dict) -> list[str]:
    ext = report["externals"]
    lines = [
        f"import closure: {report['modules_imported_at_start']} modules run at import from "
        f"{len(report['entry_modules'])} entry modules; packages scanned: "
        f"{len(report['packages_scanned'])}",
        f"  external top-level names: {len(ext.get('image', []))} on the image, "
        f"{len(ext.get('stdlib', []))} stdlib, {len(ext.get('excluded', {}))} excluded, "
        f"{len(ext.get('gap', {}))} not available",
        f"  HARD gaps (fail at import): {sorted(report['hard_gaps']) or 'none'}",
        f"  hard missing internal modules: {sorted(report['hard_missing_internal']) or 'none'}",
        f"  entry modules not found: {report['entry_modules_missing'] or 'none'}",
    ]
    soft = report["soft_gaps"]
    if soft:
        lines.append(
            f"  soft gaps ({len(soft)}): not run when the entry modules are imported (in a "
            "function, a guard, a run-time condition, or a module nothing imports at start)"
        )
        for name, use in soft.items():
            lines.append(f"    {name:28s} {use['kind']:14s} e.g. {use['where'][0]}")
    excluded = ext.get("excluded", {})
    if excluded:
        lines.append("  excluded on purpose, and how they are imported:")
        for name, use in excluded.items():
            lines.append(f"    {name:28s} {use['kind']:14s} e.g. {use['where'][0]}")
    return lines
