from metarl_lightning.envs.benchmarks import (
    BENCHMARKS,
    ENV_NAMES,
    N_GOALS,
    BenchmarkInfo,
    check_meta_batch_size,
    check_world_size,
    describe,
    make_env_fns,
    task_ids,
    valid_meta_batch_sizes,
)
from metarl_lightning.envs.vector import ProcessVectorEnv, make_vector_env

__all__ = [
    "BENCHMARKS",
    "ENV_NAMES",
    "N_GOALS",
    "BenchmarkInfo",
    "ProcessVectorEnv",
    "check_meta_batch_size",
    "check_world_size",
    "describe",
    "make_env_fns",
    "make_vector_env",
    "task_ids",
    "valid_meta_batch_sizes",
]
