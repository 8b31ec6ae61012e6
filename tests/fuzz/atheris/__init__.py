"""atheris (libFuzzer) targets, one module per parser, each calling the property of tests/fuzz/targets.py.

Run them all with `make fuzz`, or one: `python -m tests.fuzz.atheris.fuzz_cat -max_total_time=60 build/fuzz/cat`
(docs/development.md, "Fuzzing"). atheris is the optional extra `fuzz`; `make test` never imports these modules.
"""
