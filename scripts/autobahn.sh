#!/usr/bin/env bash
# WebSocket conformance: Autobahn|Testsuite's fuzzingclient against the gateway's own read
# and write path (examples/echo.rs: server::run and Node with `echo` on).
#
#   scripts/autobahn.sh [--release]    (default: the debug build, which `cargo test` leaves)
#
# Runs sections 1-7, 9 and 10 in full (12-13, permessage-deflate, are not implemented) and
# fails if any case is not OK, NON-STRICT or INFORMATIONAL, or if fewer cases ran than the
# pinned suite has. Prints the summary by section and writes it into docs/AUTOBAHN.md; the
# reports (index.html per case) go to ${CARGO_TARGET_DIR:-target}/autobahn/reports.
#
# The suite (autobahntestsuite 0.8.2, Python 2 code) is installed from PyPI with the versions
# in scripts/autobahn/requirements.txt into a virtualenv under $CHAT_CI_CACHE (default
# /var/cache/chatgate-ci)/autobahn-venv, on CPython 2.7 ($CHAT_PYTHON27, else pyenv's 2.7,
# else python2.7 on PATH). It is made again only when the requirements change.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

start_s=$SECONDS
say() { printf '== autobahn: %s (%ss)\n' "$*" "$((SECONDS - start_s))"; }
die() {
  trap - ERR
  printf '\nautobahn: FAIL: %s\n' "$*" >&2
  [ -s "${out:-/nonexistent}/echo.err" ] && { echo "--- echo server stderr" >&2; tail -20 "$out/echo.err" >&2; }
  exit 1
}
trap 'die "command failed at line $LINENO: $BASH_COMMAND"' ERR

profile=debug
case ${1:-} in
  "") ;;
  --release) profile=release ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac
# Cases in the pinned suite for the sections below: 1-7: 246, 9: 54, 10: 1.
cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]'
expected_cases=301

# --- the suite ---------------------------------------------------------------------------
cache=${CHAT_CI_CACHE:-/var/cache/chatgate-ci}
venv=$cache/autobahn-venv
reqs=scripts/autobahn/requirements.txt
py27=${CHAT_PYTHON27:-}
if [ -z "$py27" ]; then
  for p in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/2.7*/bin/python "$(command -v python2.7 || true)"; do
    [ -x "$p" ] && { py27=$p; break; }
  done
fi
[ -n "$py27" ] && "$py27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' ||
  die "no CPython 2.7 (set CHAT_PYTHON27); autobahntestsuite does not run on Python 3"
stamp="$("$py27" -V 2>&1) $(cat "$reqs" scripts/autobahn/bootstrap.txt | sha256sum | cut -d' ' -f1)"
mkdir -p "$cache"
# One run at a time on a machine: the install, and the report folder in a shared target dir.
exec 9>"$cache/autobahn.lock"
flock 9
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ] || ! [ -x "$venv/bin/wstest" ]; then
  say "installing autobahntestsuite into $venv ($py27)"
  rm -rf "$venv" "$cache/autobahn-virtualenv"
  # Variables, not flags: pyenv's 2.7 has pip 19.2, which knows no --no-python-version-warning.
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 PIP_NO_INPUT=1
  pip_quiet=(-q)
  "$py27" -m pip install "${pip_quiet[@]}" --target "$cache/autobahn-virtualenv" -r scripts/autobahn/bootstrap.txt
  PYTHONPATH=$cache/autobahn-virtualenv "$py27" -m virtualenv -q --no-download "$venv"
  "$venv/bin/pip" install "${pip_quiet[@]}" -r "$reqs"
  "$venv/bin/pip" check >/dev/null || die "broken requirements in $venv: $("$venv/bin/pip" check)"
  echo "$stamp" >"$venv/.installed"
fi
# Python 2 deprecation warnings from cryptography and pip, once per import: noise.
export PYTHONWARNINGS=ignore
"$venv/bin/wstest" -a >/dev/null || die "wstest does not start from $venv"

# --- the echo server ---------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-target}
out=$target/autobahn
rm -rf "$out"
mkdir -p "$out"
say "building examples/echo ($profile)"
build=(cargo build --quiet --example echo)
[ $profile = release ] && build+=(--release)
"${build[@]}"
"$target/$profile/examples/echo" 127.0.0.1:0 >"$out/echo.out" 2>"$out/echo.err" &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$out/echo.out")
  [ -n "$url" ] && break
  kill -0 $echo_pid 2>/dev/null || die "the echo server exited"
  sleep 0.1
done
[ -n "$url" ] || die "the echo server did not start listening within 10 s"

# --- the run -----------------------------------------------------------------------------
cat >"$out/spec.json" <<EOF
{
  "outdir": "./reports",
  "servers": [{"agent": "chatgate", "url": "$url"}],
  "cases": $cases,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
say "wstest -m fuzzingclient against $url"
# A case that hangs is cut off by the suite itself; the bound is for the suite hanging.
(cd "$out" && timeout 600 "$venv/bin/wstest" -m fuzzingclient -s spec.json >wstest.log 2>&1) ||
  die "wstest failed or timed out (see $out/wstest.log)"
kill -0 $echo_pid 2>/dev/null || die "the echo server died during the run"
[ -s "$out/reports/index.json" ] || die "wstest wrote no report (see $out/wstest.log)"
say "summary (reports: $out/reports/index.html)"
python3 scripts/autobahn/summary.py "$out/reports/index.json" "$out/reports" docs/AUTOBAHN.md $expected_cases ||
  die "conformance regression (details: $out/reports/index.html)"
say "passed"
