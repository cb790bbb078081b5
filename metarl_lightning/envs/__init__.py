from metarl_lightning.envs.benchmarks import (
    BENCHMARKS,
    ENV_NAMES,
    BenchmarkInfo,
    check_meta_batch_size,
    describe,
    make_env_fns,
    task_ids,
    valid_meta_batch_sizes,
)

__all__ = [
    "BENCHMARKS",
    "ENV_NAMES",
    "BenchmarkInfo",
    "check_meta_batch_size",
    "describe",
    "make_env_fns",
    "task_ids",
    "valid_meta_batch_sizes",
]
