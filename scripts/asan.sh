#!/usr/bin/env bash
# Runs tests/test_engine.py against an AddressSanitizer build of the native engine.
#
# The instrumented extension is built in a temporary directory and tested from a private copy of
# the package, so the in-tree build (which other processes may have loaded) is never swapped for
# it. Finally the normal extension is rebuilt and moved into place atomically (a rename, so that
# running processes keep the file they mapped).
#
# Usage: scripts/asan.sh [extra pytest args]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/warppack-asan.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$repo"
echo "== building the extension with -fsanitize=address in $work"
WARPPACK_SANITIZE=address "$python" setup.py -q build_ext \
    --build-temp "$work/build-temp" --build-lib "$work/lib" --force >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }

# grep without -q reads all of nm's output: -q would exit at the first match, and the SIGPIPE that
# nm then gets fails the pipeline under pipefail.
if ! nm -D "$work"/lib/warppack/_packer*.so | grep __asan_init >/dev/null; then
    echo "the extension was built without AddressSanitizer instrumentation" >&2
    exit 1
fi

mkdir -p "$work/pkg/warppack" "$work/tests"
cp warppack/*.py warppack/py.typed "$work/pkg/warppack/"
cp "$work"/lib/warppack/_packer*.so "$work/pkg/warppack/"
cp tests/test_engine.py tests/reference_packer.py "$work/tests/"

# libstdc++ is preloaded too: the python binary does not link it, and ASan can only intercept
# __cxa_throw (every engine error is a C++ exception) if libstdc++ is there when ASan starts.
preload="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
echo "== running tests/test_engine.py with LD_PRELOAD=\"$preload\""
status=0
(
    cd "$work"
    LD_PRELOAD="$preload" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0:log_path=$work/asan" \
    PYTHONPATH="$work/pkg" \
    "$python" -m pytest tests/test_engine.py -q -p no:cacheprovider --rootdir "$work" "$@"
) || status=$?

echo "== rebuilding the normal extension"
"$python" setup.py -q build_ext --build-temp "$work/build-normal" --build-lib "$work/lib-normal" \
    >"$work/build-normal.log" 2>&1 || { cat "$work/build-normal.log"; exit 1; }
for built in "$work"/lib-normal/warppack/_packer*.so; do
    target="warppack/$(basename "$built")"
    cp "$built" "$target.tmp.$$" && mv -f "$target.tmp.$$" "$target"
done

if compgen -G "$work/asan*" >/dev/null; then
    echo "== AddressSanitizer reports:"
    cat "$work"/asan*
    [ "$status" -ne 0 ] || status=1
fi
if [ "$status" -ne 0 ]; then
    echo "== AddressSanitizer run FAILED (exit $status)"
else
    echo "== AddressSanitizer run passed"
fi
exit "$status"
