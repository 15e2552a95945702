#!/usr/bin/env bash
# First start of the app, as a new user meets it (issue "the app as a teaching demo").
#
#   bash benchmarks/bench_first_start.sh [fresh|cached-env]
#
# fresh:      clone this repository into a temporary folder and time `./dev app --no-browser` there, from
#             the clone to the first HTTP 200 of the page (environment install included);
# cached-env: run it again in the same clone with an empty demo cache (the environment exists).
# The page is fetched with curl; Voila answers only once the notebook has run, so the 200 means the
# explorer was built. Results: benchmarks/results/first_start.md (written by hand from the printout).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${HESSVIEW_FIRST_START_DIR:-/tmp/hessview-first-start}"
mode="${1:-fresh}"
if [ "$mode" = fresh ]; then
    rm -rf "$work" && mkdir -p "$work"
    git clone -q "$repo" "$work/main"
    [ -e "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
fi
rm -rf "$work/cache"
cd "$work/main"
log="$work/$mode.log"
start=$(date +%s.%N)
HESSVIEW_CACHE_DIR="$work/cache" ./dev app --no-browser >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; pkill -f "$work/main/.venv/bin/voila" 2>/dev/null || true' EXIT
while true; do
    url=$(grep -ao "http://127.0.0.1:[0-9]*/" "$log" | head -1 || true)
    if [ -n "$url" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 300 "$url")" = 200 ]; then
        break
    fi
    kill -0 $server 2>/dev/null || { echo "the app stopped; see $log" >&2; exit 1; }
    sleep 1
done
end=$(date +%s.%N)
echo "$mode: served after $(echo "$end - $start" | bc) s ($url); load: $(cut -d' ' -f1-3 /proc/loadavg)"
