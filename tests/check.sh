# check.sh: what the shell-based CTest tests share (tests/storage_checks.sh,
# tests/full_disk.sh, the one-line tests of tests/tests.cmake). Source it:
#   . tests/check.sh
# Every check prints one line ("  OK      what" / "  NOT OK  what") and is
# counted; `finish` prints "N passed, N failed" and exits 1 when a check
# failed or none ran, so a test passes only by its checks, never by printing.
#
# Do not combine these with `set -e`: a failed check must be counted, not end
# the script, and `set -e` ignores exactly the forms a check is tempted into
# (`! cmd`, `cmd && echo OK`, a pipeline whose last command is `tail`).
#
# A test that cannot run here calls `skip WHY`: exit 77, which CTest reports
# as "Not Run (skipped)" when the test has SKIP_RETURN_CODE 77.
#
#   check DESC CMD...           CMD exits 0
#   runs DESC CMD...            CMD exits 0; its output (stdout + stderr) is
#                               kept in $OUT_FILE for later checks and shown
#                               (last lines) when it fails
#   refused DESC NEEDLE CMD...  CMD exits 1 or 2 (sdc's error / bad command
#                               line; not 0, not a crash or a signal) and its
#                               output matches the grep pattern NEEDLE
#   has DESC NEEDLE [FILE]      FILE (default: the last command's output)
#                               matches the grep pattern NEEDLE
#   lacks DESC NEEDLE [FILE]    ... does not match it
#   check_fail DESC             a check that failed (reason given in DESC)
#   skip WHY / finish

CHECK_PASSED=0
CHECK_FAILED=0
CHECK_TMP=$(mktemp -d "${TMPDIR:-/tmp}/sdc-check.XXXXXX") || exit 1
OUT_FILE=$CHECK_TMP/out
: > "$OUT_FILE"
trap 'rm -rf "$CHECK_TMP"' EXIT

check_pass() { CHECK_PASSED=$((CHECK_PASSED + 1)); echo "  OK      $1"; }
check_fail() { CHECK_FAILED=$((CHECK_FAILED + 1)); echo "  NOT OK  $1"; }

# the last command's output after a failure, indented: its own NOT OK lines
# (a checking script's) and its last lines
check_show() { { grep -m 6 'NOT OK' "$OUT_FILE"; tail -n 4 "$OUT_FILE"; } | sed 's/^/          | /'; }

check() {
    _d=$1
    shift
    if "$@"; then check_pass "$_d"; else check_fail "$_d"; fi
}

runs() {
    _d=$1
    shift
    "$@" > "$OUT_FILE" 2>&1
    _rc=$?
    if [ $_rc -eq 0 ]; then
        check_pass "$_d"
    else
        check_fail "$_d (exit $_rc)"
        check_show
    fi
    return $_rc
}

refused() {
    _d=$1
    _n=$2
    shift 2
    "$@" > "$OUT_FILE" 2>&1
    _rc=$?
    if [ $_rc -ne 1 ] && [ $_rc -ne 2 ]; then
        check_fail "$_d: exit $_rc, expected 1 or 2 (an error, not a success or a crash)"
        check_show
        return 1
    fi
    if ! grep -q -- "$_n" "$OUT_FILE"; then
        check_fail "$_d: exit $_rc but the message lacks '$_n'"
        check_show
        return 1
    fi
    check_pass "$_d (exit $_rc)"
}

has() {
    if grep -q -- "$2" "${3:-$OUT_FILE}"; then
        check_pass "$1"
    else
        check_fail "$1: no '$2' in ${3:-the output}"
        [ -n "${3:-}" ] || check_show
        return 1
    fi
}

lacks() {
    if grep -q -- "$2" "${3:-$OUT_FILE}"; then
        check_fail "$1: '$2' in ${3:-the output}"
        [ -n "${3:-}" ] || check_show
        return 1
    fi
    check_pass "$1"
}

skip() {
    echo "SKIPPED: $*"
    exit 77
}

finish() {
    echo "$CHECK_PASSED passed, $CHECK_FAILED failed"
    [ $CHECK_FAILED -eq 0 ] && [ $CHECK_PASSED -gt 0 ] && exit 0
    exit 1
}
