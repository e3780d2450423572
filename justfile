# thetadist tasks.  `just --list` shows them.

python := env_var_or_default("PYTHON", "python3")

# Install the package and the development tools.
install:
    {{python}} -m pip install -e '.[dev]'

# Run the main job on embedded defaults (sample build, manifests, patch, verify).
demo *ARGS:
    {{python}} -m thetadist demo {{ARGS}}

# The whole test suite.
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# ruff and mypy.
lint:
    {{python}} -m ruff check .
    {{python}} -m mypy

# Manifest creation throughput against plain BLAKE3, and peak RSS on 2 GiB and 20 GiB.
bench-manifest *ARGS:
    {{python}} -m bench.bench_manifest {{ARGS}}

# Patch efficiency on a generated game build against the truth and casync.
bench-delta *ARGS:
    {{python}} -m bench.bench_delta {{ARGS}}

# Loopback swarm against libtorrent 2.1.1 in the same run: 1→1, 1→8, 20 MB/s-capped seeder, fetcher RSS.
bench-swarm *ARGS:
    {{python}} -m bench.bench_swarm {{ARGS}}

# Payments: a paid against a free 1 GiB loopback transfer, voucher sign/verify µs, gas per voucher on anvil.
bench-pay *ARGS:
    {{python}} -m bench.bench_pay {{ARGS}}
