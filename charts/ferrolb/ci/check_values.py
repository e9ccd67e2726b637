#!/usr/bin/env python3
"""values.yaml, values.schema.json and docs/configuration.md describe the same keys.

Every key of values.yaml has a comment line above it and a schema entry; every schema entry
(except `global`) has a default in values.yaml; every leaf key appears in the configuration
reference as `key.path`. Keeps the three from drifting when a value is added.

usage: check_values.py CHART_DIR DOCS_FILE
"""
import json
import os
import sys

import yaml


def leaves(node, prefix=""):
    """Dotted paths of values.yaml: mappings recurse, anything else (lists, {}, scalars) is a leaf."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def schema_paths(schema, prefix=""):
    props = schema.get("properties")
    if props and schema.get("additionalProperties") is False:
        for key, sub in props.items():
            yield from schema_paths(sub, f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def uncommented_keys(path):
    """Keys in values.yaml whose line is not preceded by a comment (or another key line's
    comment block for the first key of a mapping)."""
    missing = []
    stack = []
    previous = ""
    with open(path) as f:
        for line in f:
            stripped = line.strip()
            if not stripped:
                previous = ""
                continue
            indent = len(line) - len(line.lstrip())
            if not stripped.startswith(("#", "-")) and ":" in stripped and indent % 2 == 0:
                key = stripped.split(":", 1)[0]
                del stack[indent // 2:]
                stack.append(key)
                # A mapping key that opens a section may go without its own comment when its
                # children carry theirs.
                opens_section = stripped.endswith(":")
                if not previous.startswith("#") and not opens_section:
                    missing.append(".".join(stack))
            previous = stripped
    return missing


def main():
    chart, docs = sys.argv[1], sys.argv[2]
    with open(os.path.join(chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(chart, "values.schema.json")) as f:
        schema = json.load(f)
    with open(docs) as f:
        reference = f.read()

    value_paths = set(leaves(values))
    in_schema = set(schema_paths(schema)) - {"global"}

    def covers(outer, inner):
        return inner == outer or inner.startswith(outer + ".")

    problems = []
    for path in sorted(value_paths):
        if not any(covers(s, path) for s in in_schema):
            problems.append(f"values.yaml key {path} has no entry in values.schema.json")
    for path in sorted(in_schema):
        if not any(covers(path, v) for v in value_paths):
            problems.append(f"values.schema.json describes {path}, which values.yaml does not set")
    for path in sorted(in_schema):
        if f"`{path}`" not in reference:
            problems.append(f"{docs} does not document the Helm value `{path}`")
    for path in uncommented_keys(os.path.join(chart, "values.yaml")):
        if path in in_schema:
            problems.append(f"values.yaml key {path} has no comment above it")
    print(f"  {len(in_schema)} values in values.yaml and values.schema.json, each looked up in {docs}")
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
