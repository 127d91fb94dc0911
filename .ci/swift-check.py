#!/usr/bin/env python3
"""Machine checks of the Swift package, where no Swift compiler exists (.ci/run):

1. every .swift file under swift/ parses with tree-sitter-swift (no ERROR or MISSING node);
2. every C function the Swift calls (`tunpipe_*`, `start_tun`, `stop_tun`) is in
   ffi/tunpipe.h, and so is every C struct field it reads or writes (the snake_case names
   after a dot: Swift's own names are camelCase).

What a parser cannot check (types, overloads, Sendable, the SDK's API) is listed in
swift/README.md, "How this Swift was checked".
"""
import pathlib
import re
import sys

import tree_sitter
import tree_sitter_swift

ROOT = pathlib.Path(__file__).resolve().parent.parent
SWIFT = sorted((ROOT / "swift").rglob("*.swift"))
HEADER = (ROOT / "ffi" / "tunpipe.h").read_text()

parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
problems = []


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


for path in SWIFT:
    source = path.read_bytes()
    tree = parser.parse(source)
    for node in walk(tree.root_node):
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            text = source.splitlines()[line].decode(errors="replace").strip()
            what = "missing " + node.type if node.is_missing else "cannot parse"
            problems.append(f"{path.relative_to(ROOT)}:{line + 1}:{column + 1}: {what}: {text}")

header_functions = set(re.findall(r"\b([a-z_0-9]+)\(", HEADER))
header_words = set(re.findall(r"\b[a-z_][a-z_0-9]*\b", HEADER))
for path in SWIFT:
    text = path.read_text()
    # Comments name C things in prose; only code counts.
    code = re.sub(r"//.*", "", text)
    for name in sorted(set(re.findall(r"\b((?:tunpipe_[a-z_0-9]+)|start_tun|stop_tun)\s*\(", code))):
        if name not in header_functions:
            problems.append(f"{path.relative_to(ROOT)}: calls {name}, which ffi/tunpipe.h does not declare")
    for field in sorted(set(re.findall(r"\.([a-z][a-z0-9]*_[a-z0-9_]+)\b", code))):
        if field not in header_words:
            problems.append(f"{path.relative_to(ROOT)}: uses .{field}, which is no field in ffi/tunpipe.h")

for p in problems:
    print(p)
print(f"swift check: {len(SWIFT)} files parsed, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
