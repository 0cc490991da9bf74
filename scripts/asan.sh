#!/usr/bin/env bash
# Runs the engine, collator, loader and concurrency tests (tests/engine, tests/batch, tests/loaders)
# against an AddressSanitizer build of the native engine.
#
# The instrumented extension is built in a temporary directory and tested from a private copy of
# the package, so the in-tree build (which other processes may have loaded) is never swapped for
# it. Finally the normal extension is rebuilt and moved into place atomically (a rename, so that
# running processes keep the file they mapped).
#
# Usage: scripts/asan.sh [extra pytest args, e.g. -k concurrency]
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

# The copy keeps the checkout's shape (tests/conftest.py finds ../shared/data from it).
suites=(tests/engine tests/batch tests/loaders)  # engine, collator, loaders; each holds its thread tests
mkdir -p "$work/repo/tests" "$work/pkg"
cp -r warppack "$work/pkg/"
find "$work/pkg" \( -name __pycache__ -o -name '_packer*.so' \) -prune -exec rm -rf {} +
cp "$work"/lib/warppack/_packer*.so "$work/pkg/warppack/"
cp -r tests/conftest.py tests/support "${suites[@]}" "$work/repo/tests/"
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"

# libstdc++ is preloaded too: the python binary does not link it, and ASan can only intercept
# __cxa_throw (every engine error is a C++ exception) if libstdc++ is there when ASan starts.
preload="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
echo "== running ${suites[*]} with LD_PRELOAD=\"$preload\""
status=0
(
    cd "$work/repo"
    export LD_PRELOAD="$preload"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0:log_path=$work/asan"
    # The private copy comes first on the path, before the editable install's finder.
    export PYTHONPATH="$work/pkg:$work/repo/tests"
    # GCC 12's ASan runtime does not lock its allocator around fork(): a DataLoader worker forked
    # while another thread of the parent allocates can inherit the lock held and hang. Fewer threads
    # make that rarer; the loader suite, the only one that forks, runs in a fresh process of its own
    # under a timeout, once more if it hangs.
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    loaded="$("$python" -c 'import warppack._packer as p; print(p.__file__)')"
    case "$loaded" in
        "$work/pkg/"*) ;;
        *) echo "tests would load $loaded, not the instrumented copy" >&2; exit 1 ;;
    esac
    run() { timeout "${ASAN_TIMEOUT:-1800}" "$python" -m pytest "$@" -q -p no:cacheprovider --rootdir "$work/repo"; }
    core=0
    run tests/engine tests/batch "$@" || core=$?
    for attempt in 1 2; do
        rc=0
        run tests/loaders "$@" || rc=$?
        [ "$rc" -eq 124 ] || break
        echo "== tests/loaders timed out (attempt $attempt): a DataLoader worker hung at fork, see above" >&2
    done
    [ "$core" -eq 0 ] || exit "$core"
    exit "$rc"
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
