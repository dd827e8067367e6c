"""Workers: DataLoader workers, multiprocessing pools, ``ProcessPoolExecutor``s and fork children.

A DataLoader worker reseeds from (its base seed, its rank), so workers and ranks differ; a pool worker reseeds before
each task from (job id, task index), so ``pool.map`` gives the same results whichever worker runs which task (the same
for ``ProcessPoolExecutor``, from (executor number, task number) given in submission order). Fork children are
handled in :mod:`.bootstrap`.

The wrappers below are pickled by reference into spawn children, where they import this module again and activate
the bootstrap from the environment the parent left.
"""

import os

from . import seeds, state


# --- DataLoader ------------------------------------------------------------------------------------------------------
def hook_dataloader(module):
    loader_cls = module.DataLoader
    if getattr(loader_cls, "_envkit_patched", False):
        return
    original = loader_cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not isinstance(self.worker_init_fn, WorkerInit):
            self.worker_init_fn = WorkerInit(self.worker_init_fn, state.current_rank())

    __init__.__doc__, __init__.__wrapped__ = original.__doc__, original
    __init__.__qualname__ = original.__qualname__
    loader_cls.__init__ = __init__
    loader_cls._envkit_patched = True


class WorkerInit:
    """DataLoader ``worker_init_fn``: reseeds the worker from (its base seed, its rank), then runs the job's own.

    Picklable (spawn workers) as long as the job's function is; the rank is taken when the DataLoader is built.
    """

    def __init__(self, fn, rank):
        self.fn = fn
        self.rank = rank

    def __call__(self, worker_id):
        _seed_dataloader_worker(worker_id, self.rank)
        if self.fn is not None:
            self.fn(worker_id)


def _seed_dataloader_worker(worker_id, rank):
    ensure_active()
    S = state.S
    if not S.active or S.level == "off":
        return
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    base = info.seed if info is not None else worker_id  # torch's base_seed + worker_id, drawn in the parent
    rank = state.current_rank() if rank is None else rank
    S.report.update(worker_id=worker_id, rank=rank)
    role = f"dataloader worker {worker_id}" + ("" if rank is None else f" of rank {rank}")
    stream = ("dataloader", base, -1 if rank is None else rank)
    seeds.enter_stream(stream, seeds.derive_seed(S.seed, *stream), role)
    state.sync_report()
    state.write_report()


# --- multiprocessing.Pool --------------------------------------------------------------------------------------------
def hook_pool(module):
    if getattr(module, "_envkit_patched", False):
        return
    module._envkit_orig_worker = module.worker
    module.worker = pool_worker  # Pool looks the global up each time it starts a process; pickled by name
    module._envkit_patched = True


def pool_worker(inqueue, outqueue, *args, **kwargs):
    """multiprocessing.pool's worker, reseeding before each task; threads of a ThreadPool are left alone."""
    import multiprocessing.pool
    import threading

    worker = getattr(multiprocessing.pool, "_envkit_orig_worker", None) or multiprocessing.pool.worker
    if threading.current_thread() is threading.main_thread():  # a process, not a ThreadPool thread
        ensure_active()
        S = state.S
        if S.active and S.level != "off":
            S.report["role"] = "pool worker"
            state.sync_report()
            state.write_report()
            inqueue = TaskSeedingQueue(inqueue)
    return worker(inqueue, outqueue, *args, **kwargs)


class TaskSeedingQueue:
    """The pool worker's task queue: reseeds from (job id, task index) when it hands out a task."""

    def __init__(self, queue):
        self._queue = queue

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def get(self):
        task = self._queue.get()
        if isinstance(task, tuple) and len(task) == 5:  # (job, i, func, args, kwds); None ends the worker
            enter_task(("pool", task[0], task[1] if task[1] is not None else -1), "pool worker")
        return task


# --- concurrent.futures.ProcessPoolExecutor --------------------------------------------------------------------------
def hook_executor(module):
    executor_cls = module.ProcessPoolExecutor
    if getattr(executor_cls, "_envkit_patched", False):
        return
    original = executor_cls.submit
    S = state.S

    def submit(self, fn, /, *args, **kwargs):
        if S.active and S.level != "off":
            # Numbered in the parent, in submission order: (executor, task) names the task whoever runs it.
            if getattr(self, "_envkit_index", None) is None:
                self._envkit_index, self._envkit_tasks = S.executors, 0
                S.executors += 1
            fn = SeededCall(fn, ("executor", self._envkit_index, self._envkit_tasks))
            self._envkit_tasks += 1
        return original(self, fn, *args, **kwargs)

    submit.__doc__, submit.__wrapped__ = original.__doc__, original
    executor_cls.submit = submit
    executor_cls._envkit_patched = True


class SeededCall:
    """A ProcessPoolExecutor task that reseeds the worker from its (executor, task) numbers before it runs."""

    def __init__(self, fn, stream):
        self.fn = fn
        self.stream = stream

    def __call__(self, *args, **kwargs):
        enter_task(self.stream, "executor worker")
        return self.fn(*args, **kwargs)


def enter_task(stream, role):
    ensure_active()
    S = state.S
    if S.active and S.level != "off":
        first = S.report["role"] != role
        seeds.enter_stream(tuple(stream), seeds.derive_seed(S.seed, *stream), role)
        if first:
            state.sync_report()
            state.write_report()


def ensure_active():
    """In a spawn child on a host (no .pth), activate from the environment seed_everything() left behind."""
    if not state.S.active and state.ENV_SEED in os.environ:
        from . import bootstrap

        bootstrap.activate(in_run=False)
