"""Every TensorRT name the project's source uses, found by following values out of the `tensorrt` module.

A small type inference over the AST, driven by the real bindings' API (see
`tensorrt_wheel.api_of`).  The module enters a function as `import tensorrt
[as x]`, as the result of `import_tensorrt()`, or as a parameter named `trt`
(the project's convention).  From there a value's TensorRT type follows
attribute access (a class, an enum member, a property's return type from its
docstring), calls (a constructor, or the return type in the method's
pybind11 signature), assignments to names and to `self` attributes,
containers (lists, tuples, dict items, comprehensions, `for` loops), nested
functions, and calls of functions and methods of the same module (arguments
to parameters, `return` to the caller), until nothing changes.  A class
derived from a TensorRT class (a progress monitor) has each public method it
defines checked as an override.

Each use is then checked against the bindings: the attribute exists on that
class (or the module); an attribute assigned to is a settable property; a
call's positional count, keywords and required parameters fit one overload
of the pybind11 signature, and an argument whose TensorRT type is known is
an instance of the parameter's class.

Not followed (such a use goes unchecked): TensorRT values that cross modules
other than as the module itself, that are stored in other objects'
attributes or in globals, or that come back through a callback; the type of
a value is whatever any assignment gives it (flow-insensitive), so a name
reused for two TensorRT types is checked against both.  Version guards in
the source are not understood: every use is checked against every version.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

MODULE = ("module",)


@dataclass(frozen=True)
class Use:
    """One use of a TensorRT name: `owner` is a class's qualified name, or "tensorrt" for the module."""

    where: str  # "path:line"
    owner: str
    name: str
    kind: str  # "get", "set", "call" or "override" (a method of a class derived from a TensorRT class)
    positional: int = 0  # a call's positional arguments; an override's parameters after self
    keywords: tuple[str, ...] = ()
    arg_types: tuple[tuple[int | str, frozenset], ...] = ()  # (position or keyword, types)
    variadic: bool = False  # the call passes *args or **kwargs

    @property
    def label(self) -> str:
        return f"{'trt' if self.owner == 'tensorrt' else self.owner}.{self.name}"


# ------------------------------------------------------------ signatures


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    default: bool
    star: str = ""  # "*" for *args, "**" for **kwargs


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>" and not (ch == ">" and text[i - 1] == "-"):
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def signatures(name: str, doc: str) -> list[tuple[list[Param], str]]:
    """(parameters, return annotation) of every overload a pybind11 (or inspect) docstring names."""
    found = []
    lines = list(re.finditer(rf"^(\d+\. )?{re.escape(name)}\((.*)\)(?: -> (.+))?$", doc, re.MULTILINE))
    if any(m.group(1) for m in lines):  # "Overloaded function.": the numbered lines, not the (*args, **kwargs) head
        lines = [m for m in lines if m.group(1)]
    for match in lines:
        params = []
        for part in _split_top(match.group(2)):
            if part in ("*", "/"):
                continue
            star = "**" if part.startswith("**") else "*" if part.startswith("*") else ""
            head, _, default = part.lstrip("*").partition("=")
            pname, _, annotation = head.partition(":")
            params.append(Param(pname.strip(), annotation.strip(), bool(default.strip()), star))
        found.append((params, (match.group(3) or "").strip()))
    return found


def property_type(doc: str) -> str:
    match = re.search(r"\) -> (.+)$", doc, re.MULTILINE)
    return match.group(1).strip() if match else ""


def tensorrt_class(annotation: str, api: dict) -> str | None:
    """The bindings class an annotation names ("tensorrt_bindings.tensorrt.ILogger.Severity" -> "ILogger.Severity").

    Where pybind11 could only print the C++ type ("nvonnxparser::IParserError"),
    the Python class of that name, or of that name without its leading I.
    """
    for path in re.findall(r"tensorrt(?:_bindings)?(?:\.tensorrt)?\.([A-Za-z_][\w.]*)", annotation):
        if path in api["classes"]:
            return path
    for name in re.findall(r"(?:nvinfer1|nvonnxparser)::(\w+)", annotation):
        for candidate in (name, name[1:] if name.startswith("I") else name):
            if candidate in api["classes"]:
                return candidate
    return None


# ------------------------------------------------------------- inference

MAX_NESTING = 3  # containers of containers of containers: deeper ones are dropped, so the inference settles


def _depth(t: tuple) -> int:
    if t[0] == "items":
        return 1 + max((_depth(x) for x in t[1]), default=0)
    if t[0] == "tuple":
        return 1 + max((_depth(x) for part in t[1] for x in part), default=0)
    return 0


def _items_of(types: set) -> set:
    """A container of values of these types (nothing when none is a TensorRT type)."""
    kept = frozenset(t for t in types if _depth(t) < MAX_NESTING)
    return {("items", kept)} if kept else set()


def _tuple(parts: list[set]) -> set:
    """A tuple of values of these types (nothing when no part is a TensorRT type)."""
    kept = tuple(frozenset(t for t in part if _depth(t) < MAX_NESTING) for part in parts)
    return {("tuple", kept)} if any(kept) else set()


@dataclass
class Scope:
    node: ast.AST
    parent: Scope | None
    klass: str | None = None  # for a method: its class
    names: dict[str, set] = field(default_factory=dict)
    returns: set = field(default_factory=set)


class Finder:
    """Infers TensorRT types over one set of files and collects every use (see the module docstring)."""

    def __init__(self, api: dict) -> None:
        self.api = api
        self.uses: set[Use] = set()
        self.changed = False
        self.scopes: dict[ast.AST, Scope] = {}
        self.classes: dict[tuple[str, str], ast.ClassDef] = {}
        self.class_bases: dict[str, set[str]] = {}  # "path:Class" -> TensorRT base classes
        self.attrs: dict[str, dict[str, set]] = {}  # "path:Class" -> self attribute -> types
        self.path = ""

    # ---- types: ("module",), ("class", C), ("obj", C), ("method", C, m), ("unbound", C, m),
    #      ("func", f), ("items", frozenset), ("tuple", (frozenset, ...)), ("def", FunctionDef node),
    #      ("pyclass", key), ("self", key), ("pymethod", key, name)

    def _add(self, target: dict, key: str, types) -> None:
        have = target.setdefault(key, set())
        new = set(types) - have
        if new:
            have |= new
            self.changed = True

    def _member(self, owner: str, name: str) -> dict | None:
        if owner == "tensorrt":
            return self.api["module"].get(name)
        return self.api["classes"][owner]["members"].get(name)

    def _use(self, node: ast.AST, owner: str, name: str, kind: str, **call) -> None:
        self.uses.add(Use(f"{self.path}:{node.lineno}", owner, name, kind, **call))

    def _value_of_member(self, owner: str, name: str, instance: bool) -> set:
        member = self._member(owner, name)
        if member is None:
            return set()
        kind = member["kind"]
        if kind == "class":
            return {("class", member["type"])}
        if kind == "function":
            return {("func", name)}
        if kind == "method":
            return {("method" if instance else "unbound", owner, name)}
        if kind == "property":
            cls = tensorrt_class(property_type(member["doc"]), self.api)
            return {("obj", cls)} if cls and instance else set()
        if kind == "value" and member["type"] in self.api["classes"]:
            return {("obj", member["type"])}
        return set()

    def _lookup(self, scope: Scope | None, name: str) -> set:
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return set()

    def _bind(self, scope: Scope, target: ast.AST, types: set) -> None:
        if isinstance(target, ast.Name):
            self._add(scope.names, target.id, types)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for i, elt in enumerate(target.elts):
                parts = set()
                for t in types:
                    if t[0] == "tuple" and i < len(t[1]):
                        parts |= t[1][i]
                    elif t[0] == "items":
                        parts |= t[1]
                self._bind(scope, elt, parts)
        elif isinstance(target, ast.Attribute):
            for t in self.type_of(target.value, scope):
                if t[0] == "self":
                    self._add(self.attrs.setdefault(t[1], {}), target.attr, types)
                elif t[0] == "obj":
                    self._use(target, t[1], target.attr, "set")
        elif isinstance(target, ast.Subscript):  # d[k] = v: d holds v's
            self._bind(scope, target.value, _items_of(types))
            self.type_of(target.slice, scope)
        elif isinstance(target, ast.Starred):
            self._bind(scope, target.value, _items_of(types))

    def type_of(self, node: ast.AST | None, scope: Scope) -> set:
        """The TensorRT types `node` may have (recording every use on the way)."""
        if node is None:
            return set()
        if isinstance(node, ast.Name):
            return set(self._lookup(scope, node.id))
        if isinstance(node, ast.Attribute):
            return self._attribute(node, scope)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Subscript):
            out = set()
            index = node.slice.value if isinstance(node.slice, ast.Constant) else None
            self.type_of(node.slice, scope)
            for t in self.type_of(node.value, scope):
                if t[0] == "items":
                    out |= t[1]
                elif t[0] == "tuple":
                    out |= t[1][index] if isinstance(index, int) and -len(t[1]) <= index < len(t[1]) else set().union(*t[1])
            return out
        if isinstance(node, ast.Tuple):
            return _tuple([self.type_of(e, scope) for e in node.elts])
        if isinstance(node, (ast.List, ast.Set)):
            return _items_of(set().union(*(self.type_of(e, scope) for e in node.elts)) if node.elts else set())
        if isinstance(node, ast.Dict):
            for key in node.keys:
                self.type_of(key, scope)
            return _items_of(set().union(*(self.type_of(v, scope) for v in node.values)) if node.values else set())
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for gen in node.generators:
                self._bind(scope, gen.target, self._items(self.type_of(gen.iter, scope)))
                for cond in gen.ifs:
                    self.type_of(cond, scope)
            if isinstance(node, ast.DictComp):
                self.type_of(node.key, scope)
                return _items_of(self.type_of(node.value, scope))
            return _items_of(self.type_of(node.elt, scope))
        if isinstance(node, ast.IfExp):
            self.type_of(node.test, scope)
            return self.type_of(node.body, scope) | self.type_of(node.orelse, scope)
        if isinstance(node, ast.BoolOp):
            return set().union(*(self.type_of(v, scope) for v in node.values))
        if isinstance(node, ast.NamedExpr):
            types = self.type_of(node.value, scope)
            self._bind(scope, node.target, types)
            return types
        if isinstance(node, ast.Lambda):
            return set()
        for child in ast.iter_child_nodes(node):  # anything else: only the uses inside it
            if isinstance(child, ast.expr):
                self.type_of(child, scope)
        return set()

    @staticmethod
    def _items(types: set) -> set:
        out = set()
        for t in types:
            if t[0] == "items":
                out |= t[1]
            elif t[0] == "tuple":
                out |= set().union(*t[1]) if t[1] else set()
        return out

    def _attribute(self, node: ast.Attribute, scope: Scope) -> set:
        out = set()
        for t in self.type_of(node.value, scope):
            if t == MODULE:
                self._use(node, "tensorrt", node.attr, "get")
                out |= self._value_of_member("tensorrt", node.attr, instance=False)
            elif t[0] in ("class", "obj"):
                self._use(node, t[1], node.attr, "get")
                out |= self._value_of_member(t[1], node.attr, instance=t[0] == "obj")
            elif t[0] in ("self", "pyclass"):
                out |= self._project_attribute(node, t, scope)
        return out

    def _project_attribute(self, node: ast.Attribute, t: tuple, scope: Scope) -> set:
        key = t[1]
        path, name = key.split(":")
        cls = self.classes[(path, name)]
        if any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == node.attr for s in cls.body):
            return {("pymethod", key, node.attr)}
        if node.attr in self.attrs.get(key, {}):
            return set(self.attrs[key][node.attr])
        out = set()
        for base in self.class_bases.get(key, ()):  # inherited from a TensorRT class
            if self._member(base, node.attr) is not None or not node.attr.startswith("_"):
                self._use(node, base, node.attr, "get")
                out |= self._value_of_member(base, node.attr, instance=t[0] == "self")
        return out

    def _call(self, node: ast.Call, scope: Scope) -> set:
        positional = [self.type_of(a.value if isinstance(a, ast.Starred) else a, scope) for a in node.args]
        keywords = {k.arg: self.type_of(k.value, scope) for k in node.keywords}
        variadic = any(isinstance(a, ast.Starred) for a in node.args) or None in keywords

        def call(skip: int = 0) -> dict:
            """The call's shape, without its first `skip` positional arguments (self, for an unbound method)."""
            given = [*enumerate(positional[skip:]), *((k, ts) for k, ts in keywords.items() if k)]
            return {
                "positional": len(node.args) - skip,
                "keywords": tuple(sorted(k for k in keywords if k)),
                "arg_types": tuple((i, frozenset(ts)) for i, ts in given if ts),
                "variadic": variadic,
            }

        if isinstance(node.func, ast.Name) and node.func.id == "import_tensorrt":
            return {MODULE}
        if isinstance(node.func, ast.Name) and node.func.id in ("list", "tuple", "sorted", "reversed", "iter") and positional:
            return _items_of(self._items(positional[0]))
        out = set()
        for t in self.type_of(node.func, scope):
            if t[0] == "class":
                self._use(node, t[1], "__init__", "call", **call())
                out.add(("obj", t[1]))
            elif t[0] in ("method", "unbound"):
                self._use(node, t[1], t[2], "call", **call(1 if t[0] == "unbound" else 0))
                out |= self._returns(t[1], t[2])
            elif t[0] == "func":
                self._use(node, "tensorrt", t[1], "call", **call())
                out |= self._returns("tensorrt", t[1])
            elif t[0] == "def":
                out |= self._call_project(t[1], positional, keywords, skip_self=False)
            elif t[0] == "pymethod":
                path, name = t[1].split(":")
                method = next(s for s in self.classes[(path, name)].body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == t[2])
                static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in method.decorator_list)
                out |= self._call_project(method, positional, keywords, skip_self=not static)
            elif t[0] == "pyclass":
                init = self._init_of(t[1])
                if init is not None:
                    self._call_project(init, positional, keywords, skip_self=True)
                out.add(("self", t[1]))
        return out

    def _init_of(self, key: str):
        path, name = key.split(":")
        return next((s for s in self.classes[(path, name)].body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)

    def _returns(self, owner: str, name: str) -> set:
        member = self._member(owner, name)
        out = set()
        for _, returned in signatures(name, member["doc"]) if member and "doc" in member else ():
            cls = tensorrt_class(returned, self.api)
            if cls:
                out.add(("obj", cls))
        return out

    def _call_project(self, func, positional: list[set], keywords: dict, *, skip_self: bool) -> set:
        """Bind argument types to a project function's parameters; its return types."""
        scope = self.scopes.get(func)
        if scope is None:
            return set()
        params = [a.arg for a in (*func.args.posonlyargs, *func.args.args)][1 if skip_self else 0 :]
        for name, types in zip(params, positional, strict=False):
            if types:
                self._add(scope.names, name, types)
        for name, types in keywords.items():
            if name and types:
                self._add(scope.names, name, types)
        return set(scope.returns)

    # ---- statements

    def _function(self, func, parent: Scope, klass: str | None) -> None:
        scope = self.scopes.get(func)
        if scope is None:
            scope = self.scopes[func] = Scope(func, parent, klass)
            args = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
            for i, arg in enumerate(args):
                if arg.arg == "trt":
                    scope.names["trt"] = {MODULE}
                elif i == 0 and klass and arg.arg == "self" and not any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in func.decorator_list):
                    scope.names["self"] = {("self", klass)}
        for default in (*func.args.defaults, *func.args.kw_defaults):
            self.type_of(default, parent)
        self._block(func.body, scope)

    def _block(self, body: list[ast.stmt], scope: Scope) -> None:
        for stmt in body:
            self._statement(stmt, scope)

    def _statement(self, stmt: ast.stmt, scope: Scope) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._add(scope.names, stmt.name, {("def", stmt)})
            self._function(stmt, scope, None)
        elif isinstance(stmt, ast.ClassDef):
            self._class(stmt, scope)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name == "tensorrt":
                    self._add(scope.names, alias.asname or "tensorrt", {MODULE})
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.module == "tensorrt":
                for alias in stmt.names:
                    self._use(stmt, "tensorrt", alias.name, "get")
                    self._add(scope.names, alias.asname or alias.name, self._value_of_member("tensorrt", alias.name, instance=False))
        elif isinstance(stmt, ast.Assign):
            types = self.type_of(stmt.value, scope)
            for target in stmt.targets:
                self._bind(scope, target, types)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            if stmt.value is not None:
                self._bind(scope, stmt.target, self.type_of(stmt.value, scope))
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self._bind(scope, stmt.target, self._items(self.type_of(stmt.iter, scope)))
            self._block(stmt.body, scope)
            self._block(stmt.orelse, scope)
        elif isinstance(stmt, ast.Return):
            types = self.type_of(stmt.value, scope)
            if types - scope.returns:
                scope.returns |= types
                self.changed = True
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.type_of(child, scope)
                elif isinstance(child, ast.withitem):
                    types = self.type_of(child.context_expr, scope)
                    if child.optional_vars is not None:
                        self._bind(scope, child.optional_vars, types)
                elif isinstance(child, ast.stmt):
                    self._statement(child, scope)
                elif isinstance(child, ast.excepthandler):
                    self.type_of(child.type, scope)
                    self._block(child.body, scope)
                elif isinstance(child, ast.match_case):
                    self._block(child.body, scope)

    def _class(self, node: ast.ClassDef, scope: Scope) -> None:
        key = f"{self.path}:{node.name}"
        self.classes[(self.path, node.name)] = node
        self._add(scope.names, node.name, {("pyclass", key)})
        bases = {t[1] for base in node.bases for t in self.type_of(base, scope) if t[0] == "class"}
        self.class_bases.setdefault(key, set()).update(bases)
        body = self.scopes.setdefault(node, Scope(node, scope))  # names of the class body (methods do not see them)
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._function(stmt, scope, key)
                if bases and not stmt.name.startswith("_"):
                    arity = len(stmt.args.args) - 1
                    for base in bases:
                        self._use(stmt, base, stmt.name, "override", positional=arity)
            else:
                self._statement(stmt, body)

    def run(self, files: dict[str, ast.Module], passes: int = 20) -> set[Use]:
        """Passes over every file until no type changes; the uses are those of the last pass, on the final types."""
        modules = {path: Scope(tree, None) for path, tree in files.items()}
        for _ in range(passes):
            self.changed, self.uses = False, set()
            for path, tree in files.items():
                self.path = path
                self._block(tree.body, modules[path])
            if not self.changed:
                return self.uses
        raise AssertionError(f"the TensorRT type inference did not settle in {passes} passes")


def find_uses(api: dict, paths: list[Path], root: Path) -> set[Use]:
    """Every use of a TensorRT name in these Python files (paths shown relative to `root`)."""
    files = {str(p.relative_to(root)): ast.parse(p.read_text(), filename=str(p)) for p in paths}
    return Finder(api).run(files)


# ------------------------------------------------------------------ checks


def _accepts(params: list[Param], use: Use, api: dict) -> str | None:
    """Why this overload cannot take the call, or None when it can."""
    plain = [p for p in params if not p.star]
    if use.variadic:
        return None
    if use.positional > len(plain) and not any(p.star == "*" for p in params):
        return f"{use.positional} positional arguments, it takes {len(plain)}"
    filled = {p.name for p in plain[: use.positional]}
    for key in use.keywords:
        if key in filled:
            return f"{key} given twice"
        if key not in {p.name for p in plain} and not any(p.star == "**" for p in params):
            return f"no parameter {key!r}"
        filled.add(key)
    missing = [p.name for p in plain if not p.default and p.name not in filled]
    if missing:
        return f"missing {', '.join(missing)}"
    by_name = {p.name: p for p in plain}
    for where, types in use.arg_types:
        param = plain[where] if isinstance(where, int) and where < len(plain) else by_name.get(where)
        want = param and tensorrt_class(param.annotation, api)
        got = {t[1] for t in types if t[0] == "obj"}
        if want and got and not any(want in api["classes"][g]["mro"] for g in got):
            return f"{param.name} wants {want}, given {' or '.join(sorted(got))}"
    return None


def deprecated(api: dict, use: Use) -> bool:
    """Whether the bindings mark this name deprecated (its docstring, or its line in its enum's docstring)."""
    member = api["module"].get(use.name) if use.owner == "tensorrt" else api["classes"][use.owner]["members"].get(use.name)
    text = (member or {}).get("doc", "") + (member or {}).get("about", "")
    if use.owner != "tensorrt":
        line = re.search(rf"^\s*{re.escape(use.name)} : (.*)$", api["classes"][use.owner]["doc"], re.MULTILINE)
        text += line.group(1) if line else ""
    return "deprecated" in text.lower()


def problems(api: dict, uses: set[Use]) -> list[str]:
    """One line per use these bindings do not support."""
    out = []
    for use in sorted(uses, key=lambda u: (u.where, u.label, u.kind)):
        owner = api["module"] if use.owner == "tensorrt" else api["classes"][use.owner]["members"]
        member = owner.get(use.name)
        if member is None:
            out.append(f"{use.where}: {use.label} does not exist in TensorRT {api['version']}")
            continue
        if use.kind == "set" and not (member["kind"] == "property" and member["settable"]):
            out.append(f"{use.where}: {use.label} cannot be assigned in TensorRT {api['version']}")
        if use.kind == "call":
            overloads = signatures(use.name, member.get("doc", ""))
            if not overloads:
                out.append(f"{use.where}: no signature for {use.label} in TensorRT {api['version']}")
                continue
            params = [p for p, _ in overloads]
            if use.name == "__init__" or member["kind"] == "method":
                params = [p[1:] if p and p[0].name in ("self", "arg0") else p for p in params]
            reasons = [_accepts(p, use, api) for p in params]
            if all(reasons):
                out.append(f"{use.where}: {use.label}(...) does not fit TensorRT {api['version']}: {'; '.join(r for r in reasons if r)}")
        if use.kind == "override":
            overloads = signatures(use.name, member.get("doc", "")) if member["kind"] == "method" else []
            arities = {len([p for p in params if not p.star]) - 1 for params, _ in overloads}
            if use.positional not in arities:
                out.append(f"{use.where}: override {use.label} takes {use.positional} arguments, TensorRT {api['version']} calls it with {sorted(arities)}")
    return out
