#!/usr/bin/env bash
# The suite's schemathesis run (tests/test_openapi.py) with more generated cases per operation: every operation in
# /openapi.json as a verified user and as an admin; prints operations, cases, 5xx and schema violations per role.
# Usage: bench/fuzz.sh [CASES_PER_MODE]   (default 50; prefix WEBUI_TEST_DATABASE=postgres for PostgreSQL)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export WEBUI_FUZZ_EXAMPLES="${1:-50}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
"$PYTHON" -m pytest -p no:cacheprovider -s -k test_no_answer_is_a_5xx_or_misdescribed tests/test_openapi.py \
  > "${FUZZ_LOG:-/tmp/webui-fuzz.log}" 2>&1
status=$?
grep -o 'fuzz [a-z]*: .*' "${FUZZ_LOG:-/tmp/webui-fuzz.log}"
echo "pytest exit $status in $(( $(date +%s) - start )) s; $WEBUI_FUZZ_EXAMPLES cases per generation mode and operation;" \
     "failures in ${FUZZ_LOG:-/tmp/webui-fuzz.log}"
exit $status
