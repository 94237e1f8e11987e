"""The import layers: every import of a project module points down (or sideways within a layer).

Layers, lowest first (a module may import its own layer and the layers below it, never above):

====  ==================  ==========================================================================
 0    tools               ``tools.*`` (data, schema, safe SQL executor, files, sampling) and the
                          four packages' ``__init__`` (docstrings only)
 1    sql                 ``evaluation.metrics``: ``sql_text``, ``ex``, ``rewards`` (SQL text,
                          execution accuracy and rewards, used by the society and training)
 2    serving             ``society.infra``, ``settings``, ``response_cache``, ``llm``, ``models``,
                          ``cpu_threads``, ``health``, ``server_process``, ``llama_server``, ``serving``, ``proxy``
 3    society             ``society.candidate``, ``prompts``, ``policies``, ``bandit``, ``state``,
                          ``toolkit``, ``roles``, ``config``, ``graph``, ``baselines``, ``run``
 4    society evaluation  ``society.evaluate`` (an agent over a split through ``society.run``:
                          EX, ``predictions.sql``, ``summary.json``)
 5    store and tracing   ``evaluation.tracing``: ``store``, ``trace_records``, ``trace_tree``,
                          ``trace_render``, ``society_spans``, ``langsmith_traces``, ``traces``
 6    reports             ``evaluation.stats``, ``role_effects``, ``control_effects`` (the one-shot
                          control beside the society), ``plots``, ``run_data`` (reading a
                          run directory), ``report_content`` (its tables), ``report`` (rendering),
                          ``judge``, ``candidates`` (how much the juniors' candidates differ)
 7    training            ``training.*`` but the pipeline, plan, GPU check and the CLI: the trainers,
                          ``training.run_plan`` (a profile resolved against its run directory),
                          ``training.stages`` (one evaluation stage) and ``training.phase_*`` (one
                          phase each), which run from that plan
 8    pipeline            ``training.pipeline`` (the stages and phases in order, then the report),
                          ``training.plan``,
                          ``training.gpu_check`` (runs the trainers and checks the GPU profile),
                          ``training.trained`` (a run's trained parts bound, exported)
 9    CLI                 ``society.cli.root`` (the ``sqlsociety`` root), ``society.commands``,
                          ``training.cli``, ``evaluation.cli``, ``evaluation.obs_cli``,
                          ``evaluation.judge_cli``, ``society.run_binding`` (``--run``),
                          ``training.trained_cli`` (``export``, the ``--run`` loader),
                          ``evaluation.candidates_cli`` (``candidates``)
====  ==================  ==========================================================================

The check (:func:`check`) reads the source with :mod:`ast` (nothing is imported) and reports

* an import of a module in a higher layer;
* a cycle among project modules, counting imports inside functions too (a function-level import
  hides a cycle from Python's import machinery, not from the design);
* an import inside a function of a module of *another* project package, unless the target is
  in :data:`LAZY_ALLOWED` with the reason (a heavy third-party import behind it);
* a project module that is not in :data:`LAYERS` (a new module must be placed).

The folders show the layers too. Every package (a folder with ``__init__.py``; ``society/`` holds the
modules right in it, ``evaluation/metrics/`` is another package) has a layer in :data:`PACKAGE_LAYERS`,
lowest first, and the check reports

* an import of a module whose package is in a higher package layer (a file's folder tells what it may
  import: its own folder and the folders below);
* a cycle among packages (modules can be acyclic while their folders import each other);
* an import inside a function of a module of another package (folder), unless listed in
  :data:`LAZY_ALLOWED`;
* a package that is not in :data:`PACKAGE_LAYERS`.

====  ==========  =================================================================================
 0    tools       ``tools/``: data, schema, the safe SQL executor, files, sampling
 1    metrics     ``evaluation/metrics/``: SQL text, execution accuracy (EX), rewards
 2    society     ``society/``: serving, the society, its evaluation over a split, its commands
 3    tracing     ``evaluation/tracing/``: the run store and the trace readers
 4    evaluation  ``evaluation/``: reports, the judge, the trace and report commands
 5    training    ``training/``: the trainers, the pipeline, the training commands
 6    cli root    ``society/cli/``: the ``sqlsociety`` root, above every other package
====  ==========  =================================================================================

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tools", "society", "training", "evaluation")

#: Layer name -> module patterns (fnmatch), lowest layer first. The first matching layer wins.
LAYERS: list[tuple[str, list[str]]] = [
    ("tools", ["tools", "tools.*", "society", "training", "evaluation"]),
    ("sql", ["evaluation.metrics", "evaluation.metrics.*"]),
    ("serving", ["society.infra", "society.settings", "society.response_cache", "society.llm", "society.models",
                 "society.cpu_threads", "society.health", "society.server_process", "society.llama_server",
                 "society.serving", "society.vllm_serving", "society.proxy"]),
    ("society", ["society.candidate", "society.prompts", "society.policies", "society.bandit", "society.state",
                 "society.toolkit", "society.roles", "society.config", "society.graph", "society.baselines",
                 "society.run"]),
    ("society evaluation", ["society.evaluate"]),
    ("store and tracing", ["evaluation.tracing", "evaluation.tracing.*"]),
    ("reports", ["evaluation.stats", "evaluation.role_effects", "evaluation.control_effects",
                 "evaluation.plots", "evaluation.run_data",
                 "evaluation.report_content", "evaluation.report", "evaluation.judge", "evaluation.candidates"]),
    ("training", ["training.agent", "training.adapter", "training.bandit", "training.gather", "training.remote",
                  "training.sft", "training.grpo", "training.checkpoints", "training.export",
                  "training.adapter_serving", "training.threads", "training.hooks", "training.reuse",
                  "training.lora_training", "training.profile", "training.role_aliases", "training.run_dir",
                  "training.run_serving", "training.senior_reward", "training.grpo_verl", "training.gather_config",
                  "training.run_plan", "training.stages", "training.phase_gather", "training.phase_sft",
                  "training.phase_grpo", "training.phase_grpo_verl", "training.senior_prefilter",
                  "training.phase_bandit", "training.gpu_stack", "training.run_questions",
                  "training.stage_plan"]),
    ("pipeline", ["training.pipeline", "training.plan", "training.gpu_check", "training.trained"]),
    ("cli", ["society.cli", "society.cli.*", "society.commands", "training.cli", "evaluation.cli",
             "evaluation.obs_cli", "evaluation.judge_cli", "society.run_binding", "training.trained_cli",
             "evaluation.candidates_cli"]),
]

#: Package (folder) layer name -> packages (fnmatch patterns), lowest first. A module may import the
#: modules of its own package and of packages in lower layers; every package must be listed.
PACKAGE_LAYERS: list[tuple[str, list[str]]] = [
    ("tools", ["tools"]),
    ("metrics", ["evaluation.metrics"]),
    ("society", ["society"]),
    ("tracing", ["evaluation.tracing"]),
    ("evaluation", ["evaluation"]),
    ("training", ["training"]),
    ("cli root", ["society.cli"]),
]

_AGL = (
    "evaluation.tracing.store imports Agent Lightning (about 15 s on 2 cores); a store file is checked with plain "
    "sqlite3 before that"
)
_GPU = (
    "absent on the GPU training machine (blocked in tests/test_gpu_check.py): needed only for stop strings, the "
    "senior's check decisions or the idle-thread heuristic"
)

#: (importer, imported) -> why the import stays inside a function although it crosses packages (folders).
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    ("evaluation.obs_cli", "evaluation.tracing.store"): _AGL,
    ("training.run_dir", "evaluation.tracing.store"): _AGL,
    ("training.senior_reward", "society.roles"): _GPU,
    ("training.senior_reward", "society.llm"): _GPU,
    ("training.threads", "society.cpu_threads"): _GPU,
    ("training.adapter_serving", "society.llama_server"): _GPU,
    ("training.checkpoints", "society.models"): (
        _GPU + " (society.models reads GGUF headers with gguf, also absent there)"
    ),
    ("training.gpu_check", "society.vllm_serving"): _GPU + " (the vLLM step runs only where vLLM is installed)",
}


#: Problems known and not fixed yet (see README, "Layers"). The project test fails when one of
#: them no longer occurs (delete it here) as well as on any problem not listed.
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Edge:
    """``src`` imports ``dst`` at ``path:line``; ``lazy`` when the import is inside a function."""

    src: str
    dst: str
    path: str
    line: int
    lazy: bool


@dataclass
class Report:
    """What :func:`check` found; empty lists mean the layers hold."""

    upward: list[str] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)
    lazy: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    package_upward: list[str] = field(default_factory=list)
    package_cycles: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.upward + self.cycles + self.lazy + self.unplaced + self.package_upward + self.package_cycles


def package_of(module: str, modules: Mapping[str, Path]) -> str:
    """The package (folder) ``module``'s file lies in: the module itself for an ``__init__.py``.

    >>> package_of("tools.executor", {"tools.executor": Path("tools/executor.py")})
    'tools'
    >>> package_of("evaluation.metrics", {"evaluation.metrics": Path("evaluation/metrics/__init__.py")})
    'evaluation.metrics'
    """
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def project_modules(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in modules:
            return cand
    return None


def import_edges(modules: Mapping[str, Path], root: Path) -> list[Edge]:
    """Every import of a project module by a project module (``TYPE_CHECKING`` blocks skipped)."""
    edges: list[Edge] = []
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, lazy: bool, mod: str = mod, path: Path = path, is_pkg: bool = is_pkg) -> None:
            for ch in ast.iter_child_nodes(node):
                if isinstance(ch, ast.If) and _is_type_checking(ch):
                    for sub in ch.orelse:
                        visit(sub, lazy)
                    continue
                targets: list[str] = []
                if isinstance(ch, ast.Import):
                    targets = [a.name for a in ch.names]
                elif isinstance(ch, ast.ImportFrom):
                    base = ch.module or ""
                    if ch.level:
                        pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        pkg = pkg[: len(pkg) - (ch.level - 1)]
                        base = ".".join([*pkg, base] if base else pkg)
                    targets = [f"{base}.{a.name}" for a in ch.names] or [base]
                for t in targets:
                    dst = _resolve(t, modules)
                    if dst is not None and dst != mod:
                        rel = path.relative_to(root).as_posix()
                        edges.append(Edge(mod, dst, rel, ch.lineno, lazy))
                inner = lazy or isinstance(ch, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(ch, inner)

        visit(tree, False)
    return edges


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]]) -> int | None:
    for i, (_, patterns) in enumerate(layers):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    return None


def find_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def check(
    root: Path = ROOT,
    packages: Sequence[str] = PACKAGES,
    layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
    lazy_allowed: Mapping[tuple[str, str], str] = LAZY_ALLOWED,
    package_layers: Sequence[tuple[str, Sequence[str]]] = PACKAGE_LAYERS,
) -> Report:
    """Check the packages under ``root`` against ``layers`` (see the module docstring)."""
    modules = project_modules(root, packages)
    edges = import_edges(modules, root)
    edges = sorted(set(edges), key=lambda e: (e.path, e.line, e.dst))
    rep = Report()
    rep.unplaced = [f"{m}: not in any layer; add it to LAYERS" for m in modules if layer_of(m, layers) is None]
    for e in edges:
        ls, ld = layer_of(e.src, layers), layer_of(e.dst, layers)
        where = f"{e.path}:{e.line}"
        if ls is not None and ld is not None and ld > ls:
            rep.upward.append(f"{where}: {e.src} ({layers[ls][0]}) imports {e.dst} ({layers[ld][0]}), a higher layer")
        ps, pd = package_of(e.src, modules), package_of(e.dst, modules)
        if e.lazy and ps != pd and (e.src, e.dst) not in lazy_allowed:
            rep.lazy.append(f"{where}: {e.src} imports {e.dst} inside a function; import it at the top")
        ks, kd = layer_of(ps, package_layers), layer_of(pd, package_layers)
        if ks is not None and kd is not None and kd > ks:
            rep.package_upward.append(
                f"{where}: {e.src} (package {ps}, {package_layers[ks][0]}) imports {e.dst} "
                f"(package {pd}, {package_layers[kd][0]}), a higher package"
            )
    rep.cycles = [" <-> ".join(c) + ": import cycle" for c in find_cycles(edges)]
    packages_found = sorted({package_of(m, modules) for m in modules})
    rep.unplaced += [f"{p}: package not in any PACKAGE_LAYERS entry; add it" for p in packages_found
                     if layer_of(p, package_layers) is None]
    package_edges = [Edge(package_of(e.src, modules), package_of(e.dst, modules), e.path, e.line, e.lazy)
                     for e in edges]
    rep.package_cycles = [" <-> ".join(c) + ": package cycle" for c in find_cycles(package_edges)]
    return rep


# ---------------------------------------------------------------------------------------------- the project


def test_project_imports_point_down() -> None:
    problems = check().problems()
    new = [p for p in problems if not any(k in p for k in PENDING)]
    assert not new, "\n".join(new)
    gone = [k for k in PENDING if not any(k in p for p in problems)]
    assert not gone, f"fixed, delete from PENDING: {gone}"


def test_every_lazy_exception_is_used() -> None:
    modules = project_modules(ROOT, PACKAGES)
    lazy_targets = {
        (e.src, e.dst) for e in import_edges(modules, ROOT)
        if e.lazy and package_of(e.src, modules) != package_of(e.dst, modules)
    }
    assert set(LAZY_ALLOWED) <= lazy_targets, f"unused LAZY_ALLOWED entries: {set(LAZY_ALLOWED) - lazy_targets}"


# ---------------------------------------------------------------------------------------------- the checker


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path


FIXTURE_LAYERS = [("low", ["low", "low.*"]), ("high", ["high", "high.*"])]
FIXTURE_PACKAGES = [("low", ["low", "low.*"]), ("high", ["high", "high.*"])]


def test_checker_passes_a_clean_fixture(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "X = 1\n",
        "low/b.py": "from low.a import X\n",
        "high/__init__.py": "",
        "high/c.py": (
            "from typing import TYPE_CHECKING\nfrom low import b\nif TYPE_CHECKING:\n    from high import d\n"
        ),
        "high/d.py": "from high.c import b\n\ndef f():\n    from high import c\n",
    })
    rep = check(root, ("low", "high"), FIXTURE_LAYERS, {}, FIXTURE_PACKAGES)
    # high.d -> high.c (top) and high.d -> high.c (lazy) are one direction: no cycle
    assert rep.problems() == []


def test_checker_fails_on_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from low import b\n",
        "low/b.py": "def f():\n    from low.a import g\n",
        "high/__init__.py": "",
    })
    rep = check(root, ("low", "high"), FIXTURE_LAYERS, {}, FIXTURE_PACKAGES)
    assert rep.cycles == ["low.a <-> low.b: import cycle"]


def test_checker_fails_on_an_upward_and_a_lazy_cross_package_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from high import c\n",
        "high/__init__.py": "",
        "high/c.py": "from low import a\n\ndef g():\n    import low.a\n",
        "high/new.py": "",
    })
    rep = check(root, ("low", "high"), FIXTURE_LAYERS[:1] + [("high", ["high", "high.c"])], {}, FIXTURE_PACKAGES)
    assert any("low.a (low) imports high.c (high)" in p for p in rep.upward)
    assert rep.cycles == ["high.c <-> low.a: import cycle"]
    assert sorted(p.split(": ")[0] for p in rep.lazy) == ["high/c.py:4", "low/a.py:2"]
    assert rep.unplaced == ["high.new: not in any layer; add it to LAYERS"]
    # an allowed lazy target is not reported
    allowed = {("high.c", "low.a"): "heavy", ("low.a", "high.c"): "heavy"}
    assert not check(root, ("low", "high"), FIXTURE_LAYERS, allowed, FIXTURE_PACKAGES).lazy


def test_checker_fails_on_a_package_cycle_of_acyclic_modules(tmp_path: Path) -> None:
    """Two folders importing each other through different modules: no module cycle, one package cycle."""
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from high import c\n",
        "low/b.py": "X = 1\n",
        "high/__init__.py": "",
        "high/c.py": "Y = 2\n",
        "high/d.py": "from low import b\n",
    })
    one_layer = [("all", ["low", "low.*", "high", "high.*"])]
    rep = check(root, ("low", "high"), one_layer, {}, one_layer)
    assert rep.cycles == [] and rep.package_upward == []
    assert rep.package_cycles == ["high <-> low: package cycle"]
    # with the folders in two layers the same imports also show low/ importing the higher high/
    rep = check(root, ("low", "high"), one_layer, {}, [("low", ["low"]), ("high", ["high"])])
    assert [p.split(": ")[0] for p in rep.package_upward] == ["low/a.py:1"]


def test_checker_checks_subpackages_as_packages(tmp_path: Path) -> None:
    """A subfolder is its own package: imports into it from its parent folder can point up, and a
    function-level import between the two is a cross-package one; an unlisted subfolder is reported."""
    root = _package(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from low.sub import m\n\ndef f():\n    from low.sub import n\n",
        "low/sub/__init__.py": "",
        "low/sub/m.py": "",
        "low/sub/n.py": "",
        "low/other/__init__.py": "",
    })
    packages = [("low", ["low"]), ("sub", ["low.sub"])]
    rep = check(root, ("low",), [("all", ["low", "low.*"])], {}, packages)
    assert sorted(p.split(": ")[0] for p in rep.package_upward) == ["low/a.py:1", "low/a.py:4"]
    assert [p.split(": ")[0] for p in rep.lazy] == ["low/a.py:4"]
    assert rep.unplaced == ["low.other: package not in any PACKAGE_LAYERS entry; add it"]
    # the parent above the subfolder: nothing points up, the lazy import is still reported
    rep = check(root, ("low",), [("all", ["low", "low.*"])], {}, packages[::-1] + [("other", ["low.other"])])
    assert rep.package_upward == [] and rep.unplaced == [] and len(rep.lazy) == 1


def test_todays_cycle_society_policies_to_training_bandit_would_fail(tmp_path: Path) -> None:
    """The cycle the layer test was written against: society.policies imported training.bandit inside
    a function while training imports society."""
    root = _package(tmp_path, {
        "society/__init__.py": "",
        "society/policies.py": "def _policy():\n    from training.bandit import load_policy\n",
        "training/__init__.py": "",
        "training/bandit.py": "from society.policies import usable\n",
    })
    layers = [("society", ["society", "society.*"]), ("training", ["training", "training.*"])]
    rep = check(root, ("society", "training"), layers, {})
    assert rep.upward and rep.cycles and rep.lazy
