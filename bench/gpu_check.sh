#!/usr/bin/env bash
# Issue 14's GPU measurements in one call on a lent GPU machine (bench/README.md, "On a lent GPU").
#
#   bench/gpu_check.sh [--dry-run] [--print-plan] [--budget SECONDS] [--only STEP,...] RESULTS_DIR
#
# Runs, each step under `timeout` and all of them inside one wall-clock budget (default 330 s, so
# the whole call stays under 6 minutes on an H200):
#   env             nvidia-smi, torch / CUDA / cuDNN versions, which modules import (stops the run
#                   when torch is missing, or, on the GPU, when torch sees no CUDA device; other
#                   missing modules are reported and fail only the steps that import them)
#   tests           the CUDA tests (every test_*cuda* function in tests/test_*.py, by node id),
#                   e.g. tests/test_runtime_early_exit.py::test_cuda_matches_offline
#   early_exit      python -m bench.run_all --quick --device cuda --markdown --only early_exit
#   analysis        ... --only analysis
#   training        ... --only training            (ResNet-56 w1: sdn/cnn, Trainer/loop, bf16, NHWC)
#   training_archs  python -m bench.bench_training --quick --device cuda --archs vgg16,wrn32_4,mobilenet
#                   (with run_all's ResNet-56: all four architectures, for per-architecture
#                   bf16 and channels_last choices)
#   thresholds      ... --only thresholds
# run_all's orchestration and catalogue benchmarks are CPU work (and need Ray / DuckDB, which the
# device lacks), so they are not run there. Each benchmark is its own run_all call so that a step
# that hangs loses only its own figures.
#
# RESULTS_DIR receives gpu_check.json (every figure, the environment, the steps, the test results
# and each benchmark's full JSON; `python -m bench.run_all --from-json` renders it), gpu_check.md
# and gpu_check.log: three files, rewritten after every step.
#
# --dry-run (or GPU_CHECK_DRY_RUN=1): the same steps on this machine's CPU at --smoke sizes with
# --device cpu --threads 1, with the device's missing packages made unimportable
# (bench/device_sim), and carried wheels listed but not installed.
# --print-plan: print the steps and their commands, run nothing.
# --only env,thresholds: run only the named steps (a quick check of the machinery itself).
# PYTHON overrides the interpreter (default: .venv/bin/python if the checkout has one, else python3,
# which on the device is the image's Python with PyTorch).
set -uo pipefail

usage() { echo "usage: bench/gpu_check.sh [--dry-run] [--print-plan] [--budget SECONDS] [--only STEP,...] RESULTS_DIR"; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "GPU_CHECK_DRY_RUN must be 0 or 1, not '$DRY_RUN'"
PRINT_PLAN=0
BUDGET=330
ONLY=""
RESULTS=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --print-plan) PRINT_PLAN=1 ;;
    --budget) (($# >= 2)) || die "--budget needs a number of seconds"; BUDGET=$2; shift ;;
    --budget=*) BUDGET=${1#--budget=} ;;
    --only) (($# >= 2)) || die "--only needs step names"; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' ($(usage))" ;;
    *) [[ -z $RESULTS ]] || die "one RESULTS_DIR only, got '$RESULTS' and '$1'"; RESULTS=$1 ;;
  esac
  shift
done
[[ -n $RESULTS ]] || die "RESULTS_DIR missing ($(usage))"
[[ $BUDGET =~ ^[0-9]+$ ]] && ((BUDGET >= 60)) || die "--budget must be a whole number of seconds >= 60, not '$BUDGET'"
[[ ! -e $RESULTS || -d $RESULTS ]] || die "RESULTS_DIR '$RESULTS' exists and is not a folder"
[[ $RESULTS == /* ]] || RESULTS=$PWD/$RESULTS # relative to where it was called, not to the repo

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || die "cannot enter $REPO"
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# ARCHS: the training_archs step's architectures, the ones run_all's training step leaves out
# (it measures resnet56 at --quick, vgg16 at --smoke). On the CPU at --smoke width wrn32_4 is
# skipped with a note (bench.common.channels_last_safe).
if ((DRY_RUN)); then
  MODE=dry-run SIZE=--smoke DEVICE=cpu ARCHS=mobilenet,wrn32_4
  EXTRA=(--threads 1)
  REQUIRE_CUDA=()
else
  MODE=gpu SIZE=--quick DEVICE=cuda ARCHS=vgg16,wrn32_4,mobilenet
  EXTRA=()
  REQUIRE_CUDA=(--require-cuda)
fi
# Project dependencies absent from the device image (KINDS.md), refused during a dry run.
DEVICE_MISSING=ray,mlflow,sqlalchemy,alembic,duckdb,pydantic,pydantic_core
# The CUDA tests: every test function named test_*cuda* in tests/test_*.py, as node ids. Only
# their files are collected (other test modules import Ray or MLflow, absent on the device), and
# node ids rather than `-k cuda`, which would also match every test of a module named *cuda*.
CUDA_TESTS=$(grep -H -o -E '^def test_[A-Za-z0-9_]*cuda[A-Za-z0-9_]*' tests/test_*.py 2>/dev/null |
  sed -E 's/:def /::/' | tr '\n' ' ')
# None found: name a missing file, so that pytest fails the step instead of running the suite.
CUDA_TESTS=${CUDA_TESTS:-tests/NO_TEST_NAMED_test_cuda_FOUND.py}

# name, cap in seconds, command (the command's own RESULTS folder is $WORK/steps/<name>)
STEPS=(
  "env|60|$PYTHON -m bench.gpu_check env @WORK@/env.json ${REQUIRE_CUDA[*]}"
  "tests|120|$PYTHON -m pytest -q -p no:cacheprovider -rA --junitxml=@WORK@/pytest.xml $CUDA_TESTS"
  "early_exit|180|$PYTHON -m bench.run_all $SIZE --device $DEVICE ${EXTRA[*]} --markdown --only early_exit --results-dir @DIR@"
  "analysis|120|$PYTHON -m bench.run_all $SIZE --device $DEVICE ${EXTRA[*]} --markdown --only analysis --results-dir @DIR@"
  "training|90|$PYTHON -m bench.run_all $SIZE --device $DEVICE ${EXTRA[*]} --markdown --only training --results-dir @DIR@"
  "training_archs|150|$PYTHON -m bench.bench_training $SIZE --device $DEVICE ${EXTRA[*]} --archs $ARCHS --results-dir @DIR@"
  "thresholds|45|$PYTHON -m bench.run_all $SIZE --device $DEVICE ${EXTRA[*]} --markdown --only thresholds --results-dir @DIR@"
)

if [[ -n $ONLY ]]; then
  known=" $(for step in "${STEPS[@]}"; do printf '%s ' "${step%%|*}"; done)"
  kept=()
  for want in ${ONLY//,/ }; do
    [[ $known == *" $want "* ]] || die "--only: unknown step '$want' (steps:$known)"
  done
  for step in "${STEPS[@]}"; do
    [[ ",$ONLY," == *",${step%%|*},"* ]] && kept+=("$step")
  done
  STEPS=("${kept[@]}")
fi

if ((PRINT_PLAN)); then
  echo "mode $MODE, budget ${BUDGET}s, python $PYTHON, results $RESULTS"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    echo "$name (cap ${cap}s): $cmd"
  done
  exit 0
fi

mkdir -p "$RESULTS" || die "cannot create RESULTS_DIR '$RESULTS'"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG=$RESULTS/gpu_check.log
: >"$LOG"
RESERVE=20 # seconds kept back for the last collect and the kill grace of `timeout`
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }

say "gpu_check: mode $MODE, budget ${BUDGET}s, python $PYTHON, repo $REPO, results $RESULTS, scratch $WORK"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
PYPATH=$REPO
if compgen -G ".whl/*.whl" >/dev/null; then
  if ((DRY_RUN)); then
    say "dry run: carried wheels not installed: $(cd .whl && echo *.whl)"
  else
    say "installing carried wheels: $(cd .whl && echo *.whl)"
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    ((PIPESTATUS[0] == 0)) || say "WARNING: wheel install failed; continuing with the image's packages"
    PYPATH=$REPO:/tmp/site
  fi
fi
if ((DRY_RUN)); then
  PYPATH=$REPO/bench/device_sim:$PYPATH
  export SDN_DEVICE_MISSING=$DEVICE_MISSING
  say "dry run: refusing imports of $DEVICE_MISSING (absent on the device)"
fi
export PYTHONPATH=$PYPATH${PYTHONPATH:+:$PYTHONPATH}

collect() {
  $PYTHON -m bench.gpu_check collect "$WORK" "$RESULTS" --mode "$MODE" --budget "$BUDGET" \
    --elapsed $((SECONDS - START)) 2>&1 | tee -a "$LOG" >/dev/null ||
    say "WARNING: collecting the results failed (traceback in gpu_check.log)"
}

stop=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$step"
  dir=$WORK/steps/$name
  mkdir -p "$dir"
  cmd=${cmd//@WORK@/$WORK}
  cmd=${cmd//@DIR@/$dir}
  left=$((START + BUDGET - RESERVE - SECONDS))
  limit=$((cap < left ? cap : left))
  if ((stop)) || ((left < 15)); then
    why=$([[ $stop == 1 ]] && echo "the env step failed" || echo "budget spent")
    say "=== $name: skipped ($why)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$cap" 0 "" 0 skipped "$cmd" >>"$WORK/steps.tsv"
    continue
  fi
  say "=== $name (limit ${limit}s, $((SECONDS - START))s elapsed): $cmd"
  t0=$SECONDS
  # shellcheck disable=SC2086  # the command is a word list by design
  timeout --kill-after=5 "$limit" $cmd 2>&1 | tee -a "$LOG" "$dir/output.log"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - t0))
  if ((rc == 0)); then status=ok; elif ((rc == 124 || rc == 137)); then status=timeout; else status=failed; fi
  # pytest: 1 = some test failed, 5 = no test selected; both are results, not broken steps
  if [[ $name == tests ]] && ((rc == 1 || rc == 5)); then status=$([[ $rc == 1 ]] && echo tests-failed || echo no-tests); fi
  say "=== $name: $status (exit $rc, ${took}s)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$cap" "$limit" "$rc" "$took" "$status" "$cmd" >>"$WORK/steps.tsv"
  [[ $name == env && $status != ok ]] && stop=1
  collect
done

collect
say ""
say "=== gpu_check done in $((SECONDS - START))s (budget ${BUDGET}s): $RESULTS/{gpu_check.json,gpu_check.md,gpu_check.log}"
tee -a "$LOG" <"$RESULTS/gpu_check.md"
# Exit 1 when a step did not complete or a CUDA test failed (figure misses are results, not errors).
incomplete=$(cut -f1,6 "$WORK/steps.tsv" | grep -v -E $'\t(ok|no-tests)$' | cut -f1 | tr '\n' ' ')
rm -rf "$WORK"
if [[ -n $incomplete ]]; then
  say "gpu_check: not clean: $incomplete"
  exit 1
fi
