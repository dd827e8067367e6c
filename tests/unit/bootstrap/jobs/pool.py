"""pool.map and ProcessPoolExecutor.map over a function that draws random numbers; argv: start method, pool size."""

import json
import multiprocessing as mp
import random
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def task(i):
    return [i, random.random(), float(np.random.rand()), np.random.default_rng().random()]


if __name__ == "__main__":
    method, processes = sys.argv[1], int(sys.argv[2])
    context = mp.get_context(method)
    with context.Pool(processes) as pool:
        first = pool.map(task, range(6), chunksize=1)
        second = pool.map(task, range(6), chunksize=2)
    with ProcessPoolExecutor(processes, mp_context=context) as executor:
        executor_map = list(executor.map(task, range(6)))
    print(json.dumps({"first": first, "second": second, "executor": executor_map, "main": random.random()}))
