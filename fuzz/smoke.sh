#!/usr/bin/env bash
# What `./trunkline test` runs: build every fuzz target, fuzz each for ~10 s, fail on any crash.
exec "$(dirname "${BASH_SOURCE[0]}")/run.sh" --smoke "$@"
