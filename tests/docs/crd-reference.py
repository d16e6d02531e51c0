#!/usr/bin/env python3
"""Generates docs/streamjob-reference.md, the reference of every StreamJob field, from the generated
CRD (crds/streamjob.yaml, itself generated from the Rust types): path, type, default, limits and the
field's documentation. `--check` fails when the checked-in page is stale (CI runs it).

  python3 tests/docs/crd-reference.py           # write docs/streamjob-reference.md
  python3 tests/docs/crd-reference.py --check   # fail on drift
"""

import json
import pathlib
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD = REPO / "crds/streamjob.yaml"
OUT = REPO / "docs/streamjob-reference.md"
REGEN = "python3 tests/docs/crd-reference.py"


def type_of(schema):
    if "type" in schema:
        t = schema["type"]
        if t == "array":
            return f"array of {type_of(schema.get('items', {}))}"
        if t == "object" and "additionalProperties" in schema:
            return f"map of {type_of(schema['additionalProperties'])}"
        return t
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (any fields)"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(sorted({type_of(s) for s in schema.get("anyOf", schema.get("oneOf", []))}))
    return "object"


def limits(schema):
    parts = []
    for key, label in [("minimum", "min"), ("maximum", "max"), ("minLength", "min length"),
                       ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items")]:
        if key in schema:
            value = schema[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            parts.append(f"{label} {value}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None))
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    return "; ".join(parts)


def cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def walk(schema, path, rows, required=()):
    for name, sub in sorted((schema.get("properties") or {}).items()):
        here = f"{path}.{name}" if path else name
        default = sub.get("default")
        rows.append((here, type_of(sub), "yes" if name in required else "",
                     "" if default is None or isinstance(default, dict) else json.dumps(default),
                     limits(sub), sub.get("description", "")))
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        if target.get("properties") and not here.endswith("podTemplate"):
            walk(target, here + ("[]" if sub.get("type") == "array" else ""), rows, target.get("required", ()))


def render():
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    lines = [
        f"# {kind} reference ({group}/{version['name']})",
        "",
        f"Every field of the `{kind}` resource, generated from `crds/streamjob.yaml` (which `streamjob crd`",
        f"generates from the Rust types). Do not edit: regenerate with `{REGEN}`.",
        "",
    ]
    for part in ("spec", "status"):
        rows = []
        walk(root[part], part, rows, root[part].get("required", ()))
        lines += [f"## `{part}`", "", cell(root[part].get("description", "")), "",
                  "| field | type | required | default | limits | description |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| `{p}` | {cell(t)} | {r} | {('`' + cell(d) + '`') if d else ''} | {cell(l)} | {cell(desc)} |"
                  for p, t, r, d, l, desc in rows]
        lines.append("")
    return "\n".join(lines)


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.is_file() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(REPO)} is stale: regenerate it with `{REGEN}`")
        print(f"{OUT.relative_to(REPO)} is up to date")
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
