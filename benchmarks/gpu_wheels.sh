#!/usr/bin/env bash
# Builds .whl/: what a lent GPU machine (Python 3.12, torch preinstalled, no network) lacks to run
# repair_ray with Ray, as wheels that travel with the working tree (64 MiB at most in all).
#   ray 2.60.0 for cp312, slimmed: without ray/jars/ (Java workers, 33 MB) and the dashboard's web
#   client build (9 MB); Ray's Python code, raylet, gcs_server and _raylet.so stay whole. Its RECORD
#   lists only what is left, so pip installs it cleanly.
#   the dependencies missing there: pydantic (+ core, annotated-types, typing-inspection) and
#   jsonschema (+ specifications, referencing, rpds-py); versions as constraints.txt pins them.
# Run from the repo root; .whl/ is ignored (add /.whl/ to .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt | head -1; }
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps "${platform[@]}" -d "$work" ray==2.60.0 \
  "$(pin annotated-types)" "$(pin jsonschema)" "$(pin jsonschema-specifications)" "$(pin pydantic)" \
  "$(pin pydantic_core)" "$(pin referencing)" "$(pin rpds-py)" "$(pin typing-inspection)"
rm -rf .whl && mkdir -p .whl
mv "$work"/*.whl .whl/
ray_wheel=$(ls "$PWD"/.whl/ray-2.60.0-*.whl)
mkdir "$work/ray" && (cd "$work/ray" && unzip -q "$ray_wheel")
rm -rf "$work/ray/ray/jars" "$work/ray/ray/dashboard/client/build"
python3 - "$work/ray" "$ray_wheel" <<'PY'
import csv, io, os, sys, zipfile
root, out = sys.argv[1], sys.argv[2]
os.chdir(root)
record = next(p for p in os.listdir(".") if p.endswith(".dist-info")) + "/RECORD"
rows = [r for r in csv.reader(open(record)) if r and (os.path.exists(r[0]) or r[0] == record)]
text = io.StringIO()
csv.writer(text, lineterminator="\n").writerows(rows)
open(record, "w").write(text.getvalue())
names = [os.path.relpath(os.path.join(d, f)) for d, _, files in os.walk(".") for f in files]
names.sort(key=lambda p: (".dist-info" in p, p == record, p))
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as wheel:
    for name in names:
        info = zipfile.ZipInfo.from_file(name, name)  # keeps the executable bits of raylet, gcs_server
        with open(name, "rb") as f:
            wheel.writestr(info, f.read(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
PY
# pip installs them for Python 3.12 (as the machine will, --target) and Ray's servers are still there
python3 -m pip install -q --no-deps --target "$work/check" "${platform[@]}" .whl/*.whl
for f in ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet ray/dashboard/__init__.py; do
  [ -e "$work/check/$f" ] || { echo "slimmed ray lacks $f" >&2; exit 1; }
done
ls -l .whl
echo "total: $(du -cb .whl/*.whl | tail -1 | cut -f1) bytes ($(du -ch .whl/*.whl | tail -1 | cut -f1)) in $(ls .whl | wc -l) wheels"
