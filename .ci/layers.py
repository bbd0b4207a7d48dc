#!/usr/bin/env python3
"""The layer check: each top-level module of src/ (a folder counts as one)
may import only from modules in layers below its own.

LAYERS lists them bottom up; a module's `crate::<name>` paths in code (not
in comments) are its imports. Exit status 1, with every offending line,
when a module reaches up or sideways, or when a module is in no layer.

Run: python3 .ci/layers.py [--report]   (--report: print, never fail)
"""

import pathlib
import re
import sys

# Bottom up. A module may use modules of lower layers only.
LAYERS = [
    # HTTP vocabulary, abilities, token format, clock, counters, and the
    # byte-level pieces of the edges (tunnels, deadlines): they know no
    # other module.
    ["fields", "ability", "token", "clock", "metrics", "tunnel", "deadline"],
    # Rate-limit policies, windows and quota counts, the RateLimit fields:
    # in memory, below the store (whose rows carry a token's limits).
    ["ratelimit"],
    # Routes, the store, request identity and TLS, each with its own config types.
    ["route", "store", "trace", "tls"],
    # Denials and the token cache.
    ["error", "cache"],
    # The access log and series record carries a cache entry.
    ["usage", "signals"],
    ["issuer"],
    # Upstream connections: config, cap, pools, clients.
    ["upstream"],
    # The request rule book: what is stripped, refused, added.
    ["rules"],
    # Config validation composes the tables above; the response body.
    ["config", "body"],
    # The auth decision.
    ["auth"],
    # The request path's state and decision, no codec in it.
    ["gateway"],
    ["forward_auth"],
    # Live reload: build, validate, swap the gateway's snapshot.
    ["reload"],
    # The control plane's shared vocabulary, then the control plane.
    ["api"],
    ["flows", "admin"],
    # The edges: hyper's driver, the fast path, the built-in echo upstream.
    ["proxy", "fast", "echo"],
    ["server"],
    ["cli"],
]

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")


def module_files():
    for p in sorted(SRC.iterdir()):
        if p.is_dir():
            yield p.name, sorted(p.rglob("*.rs"))
        elif p.suffix == ".rs" and p.stem not in ("lib", "main"):
            yield p.stem, [p]


def code_lines(path):
    for n, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("//", 1)[0]
        if code.strip():
            yield n, code


def imports(code):
    for m in PATH.finditer(code):
        target = m.group(1)
        if target.startswith("{"):
            for part in target[1:-1].split(","):
                name = part.strip().split("::", 1)[0].strip()
                if name:
                    yield name
        else:
            yield target


def main():
    report = "--report" in sys.argv
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    problems = []
    for module, files in module_files():
        if module not in layer_of:
            problems.append(f"src/{module}: in no layer of .ci/layers.py")
            continue
        mine = layer_of[module]
        for f in files:
            for n, code in code_lines(f):
                for target in imports(code):
                    if target == module or target not in layer_of:
                        continue
                    if layer_of[target] >= mine:
                        rel = f.relative_to(SRC.parent)
                        problems.append(
                            f"{rel}:{n}: {module} (layer {mine}) uses {target} (layer {layer_of[target]})"
                        )
    for p in problems:
        print(p)
    if problems and not report:
        print(f"layers: {len(problems)} imports reach up or sideways", file=sys.stderr)
        return 1
    print(f"layers: {len(problems)} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
