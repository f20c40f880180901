"""Many ALFWorld envs stepped in parallel by worker processes.

The engine is pure Python plus fast-downward and holds the GIL, so episodes in
one process run one after another. ``ALFWorldVecEnv`` spreads ``num_envs``
``ALFWorldEnv`` instances over ``num_workers`` processes (env ``i`` lives in
worker ``i % num_workers``); ``reset`` and ``step`` send every worker its share
of the batch first and then collect the answers, so the workers run at the
same time. Any subset of envs can be reset or stepped (finished episodes just
drop out of the batch), which is what a rollout loop over groups needs.

    with ALFWorldVecEnv(num_envs=16, num_workers=2, env_kwargs={"split": "train"}) as vec:
        obs, infos = vec.reset(seeds=[7] * 16)
        obs, rewards, terminated, truncated, infos = vec.step([i["admissible_actions"][0] for i in infos])
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Sequence

from onelayer.envs.alfworld_data import resolve_data_path
from onelayer.errors import UserError


def _worker(conn, env_kwargs: dict, env_ids: list[int]) -> None:
    """Own the envs ``env_ids``; answer ("reset"|"step", [(i, ...)]) messages until "close"."""
    from onelayer.envs.alfworld_env import ALFWorldEnv

    try:
        envs = {i: ALFWorldEnv(**env_kwargs) for i in env_ids}
        conn.send(("ok", None))
    except BaseException as e:  # report construction errors to the parent
        conn.send(("error", _portable(e)))
        conn.close()
        return
    while True:
        try:
            cmd, payload = conn.recv()
        except EOFError:
            break
        if cmd == "close":
            break
        try:
            if cmd == "reset":
                out = [(i, envs[i].reset(seed=seed, options=options)) for i, seed, options in payload]
            elif cmd == "step":
                out = [(i, envs[i].step(action)) for i, action in payload]
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", out))
        except BaseException as e:
            conn.send(("error", _portable(e)))
    conn.close()


def _portable(e: BaseException) -> BaseException:
    if isinstance(e, UserError):
        return e
    return RuntimeError(f"ALFWorld worker failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")


class ALFWorldVecEnv:
    """``num_envs`` ALFWorld envs in ``num_workers`` processes (0: all in this process, no parallelism).

    Args:
        num_envs: number of envs (episodes that can be live at once).
        num_workers: worker processes; default ``min(num_envs, os.cpu_count())``.
        env_kwargs: keyword arguments of every ``ALFWorldEnv``; ``data_path`` is
            resolved here once (the default generated set is made before the
            workers start).
        start_method: multiprocessing start method (``spawn`` is safe next to
            torch threads; ``fork`` starts faster on Linux).
    """

    def __init__(self, num_envs: int, num_workers: int | None = None, env_kwargs: dict | None = None,
                 start_method: str = "spawn"):
        if num_envs < 1:
            raise UserError(f"num_envs must be >= 1, got {num_envs}")
        kwargs = dict(env_kwargs or {})
        kwargs["data_path"] = str(resolve_data_path(kwargs.get("data_path"), kwargs.get("split", "train")))
        self.env_kwargs = kwargs
        self.num_envs = num_envs
        self.num_workers = min(num_envs, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        if self.num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self._local = None
        self._conns, self._procs = [], []
        self.closed = False
        if self.num_workers == 0:
            from onelayer.envs.alfworld_env import ALFWorldEnv

            self._local = [ALFWorldEnv(**kwargs) for _ in range(num_envs)]
            self.num_tasks = self._local[0].num_tasks
            return
        ctx = mp.get_context(start_method)
        for w in range(self.num_workers):
            parent, child = ctx.Pipe()
            ids = list(range(w, num_envs, self.num_workers))
            proc = ctx.Process(target=_worker, args=(child, kwargs, ids), daemon=True, name=f"alfworld-worker-{w}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            self._receive(conn)
        from onelayer.envs.alfworld_data import find_games

        self.num_tasks = len(find_games(kwargs["data_path"], kwargs.get("task_types")))

    def __len__(self) -> int:
        return self.num_envs

    def _receive(self, conn):
        try:
            status, payload = conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("an ALFWorld worker process died (see its stderr)") from None
        if status == "error":
            self.close()
            raise payload
        return payload

    def _run(self, cmd: str, items: list[tuple]) -> dict[int, tuple]:
        if self.closed:
            raise RuntimeError("ALFWorldVecEnv is closed")
        for item in items:
            if not 0 <= item[0] < self.num_envs:
                raise UserError(f"env index {item[0]} out of range 0..{self.num_envs - 1}")
        if self._local is not None:
            if cmd == "reset":
                return {i: self._local[i].reset(seed=s, options=o) for i, s, o in items}
            return {i: self._local[i].step(a) for i, a in items}
        shares: dict[int, list] = {}
        for item in items:
            shares.setdefault(item[0] % self.num_workers, []).append(item)
        for w, share in shares.items():
            self._conns[w].send((cmd, share))
        results = {}
        for w in shares:
            results.update(dict(self._receive(self._conns[w])))
        return results

    def reset(self, seeds: Sequence[int | None] | None = None, options: Sequence[dict | None] | None = None,
              indices: Sequence[int] | None = None) -> tuple[list[str], list[dict]]:
        """Reset envs ``indices`` (default all) with per-env ``seeds`` / ``options``; returns (obs, infos) in that order."""
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        seeds = [None] * len(idx) if seeds is None else list(seeds)
        options = [None] * len(idx) if options is None else list(options)
        if not len(seeds) == len(options) == len(idx):
            raise UserError(f"reset: {len(idx)} envs but {len(seeds)} seeds and {len(options)} options")
        res = self._run("reset", list(zip(idx, seeds, options)))
        return [res[i][0] for i in idx], [res[i][1] for i in idx]

    def step(self, actions: Sequence[str], indices: Sequence[int] | None = None):
        """Step envs ``indices`` (default all) with ``actions``; returns lists (obs, rewards, terminated, truncated, infos)."""
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        if len(actions) != len(idx):
            raise UserError(f"step: {len(actions)} actions for {len(idx)} envs")
        res = self._run("step", list(zip(idx, actions)))
        out = [res[i] for i in idx]
        return ([o[0] for o in out], [float(o[1]) for o in out], [bool(o[2]) for o in out],
                [bool(o[3]) for o in out], [o[4] for o in out])

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> ALFWorldVecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
