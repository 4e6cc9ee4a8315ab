#!/usr/bin/env bash
# Generates the API clients from the OpenAPI document:
#
#   clients/generate.sh [DOCUMENT [OUT]]
#
# DOCUMENT is a file (default: this checkout's document, printed by
# `cargo run -p courier-api --example openapi`, exactly what /openapi.json
# serves); OUT defaults to target/clients. The document is checked with
# openapi-spec-validator first. Then:
#
#   OUT/openapi.json                  the document
#   OUT/python/                       openapi-python-client's project (setup.py),
#                                     package courier_client
#   OUT/typescript/schema.d.ts        openapi-typescript's types, for openapi-fetch
#   OUT/typescript/dist/example.js    clients/typescript/example.ts, type-checked
#                                     against them and compiled
#
# Nothing here is committed: the clients follow the handlers, and are made
# again whenever wanted. The tools come from tests/tools.sh (pinned in
# clients/requirements.txt and clients/package-lock.json).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/target/tools
OUT=$(mkdir -p "${2:-$ROOT/target/clients}" && cd "${2:-$ROOT/target/clients}" && pwd)

for tool in "$TOOLS/venv/bin/openapi-python-client" "$TOOLS/node/node_modules/.bin/openapi-typescript"; do
    [ -x "$tool" ] || { echo "error: $tool is missing: run tests/tools.sh (make tools)" >&2; exit 1; }
done

if [ -n "${1:-}" ]; then
    cp "$1" "$OUT/openapi.json.new"
else
    (cd "$ROOT" && cargo run -q -p courier-api --example openapi) >"$OUT/openapi.json.new"
fi
mv "$OUT/openapi.json.new" "$OUT/openapi.json"
"$TOOLS/venv/bin/openapi-spec-validator" "$OUT/openapi.json" >/dev/null

# Python: any warning (a part of the document the generator had to skip)
# is an error. Its post-hooks run ruff, from the virtualenv.
rm -rf "$OUT/python"
PATH="$TOOLS/venv/bin:$PATH" "$TOOLS/venv/bin/openapi-python-client" generate \
    --path "$OUT/openapi.json" --output-path "$OUT/python" \
    --config "$ROOT/clients/python/config.yaml" --meta setup \
    --fail-on-warning >"$OUT/python.log" 2>&1 \
    || { cat "$OUT/python.log" >&2; echo "error: openapi-python-client failed" >&2; exit 1; }

# TypeScript: the types, then the example compiled against them, in a
# directory of its own that finds the pinned packages.
rm -rf "$OUT/typescript"
mkdir -p "$OUT/typescript"
ln -s "$TOOLS/node/node_modules" "$OUT/typescript/node_modules"
printf '{"type": "module", "private": true}\n' >"$OUT/typescript/package.json"
cp "$ROOT/clients/typescript/example.ts" "$ROOT/clients/typescript/tsconfig.json" "$OUT/typescript/"
"$TOOLS/node/node_modules/.bin/openapi-typescript" "$OUT/openapi.json" \
    --output "$OUT/typescript/schema.d.ts" >"$OUT/typescript.log" 2>&1 \
    || { cat "$OUT/typescript.log" >&2; echo "error: openapi-typescript failed" >&2; exit 1; }
"$TOOLS/node/node_modules/.bin/tsc" -p "$OUT/typescript" \
    || { echo "error: clients/typescript/example.ts does not type-check against the generated types" >&2; exit 1; }

echo "clients in $OUT: python/ (package courier_client; pip install $OUT/python)," \
    "typescript/schema.d.ts (for openapi-fetch; example: typescript/dist/example.js)"
