"""Train a CartPole agent offline, purely from a replay store on disk, with prioritized replay.

    replaystore record CartPole-v1 runs/cartpole --steps 50000 \\
        --policy examples/cartpole_policy.py:policy --seed 0
    python examples/offline_dqn.py runs/cartpole --run-dir runs/dqn --seed 0

The agent never touches the environment while it learns: every batch is drawn from the store by
a :class:`replaystore.PrioritizedSampler` and read with ``store.get``, and the batch's TD errors
go back into the store's priority index with ``update_priorities``. The environment is used
only to *evaluate* the greedy policy (a few episodes every ``--eval-every`` steps, and
``--eval-episodes`` at the end, on fixed seeds), which is compared with the average return of
the behaviour policy that recorded the data (read from the store's episode table).

Algorithm: double DQN (a target network, and the online network choosing the next action that
the target network evaluates) with a conservative (CQL) penalty, i.e. discrete CQL
(Kumar et al. 2020) on a double-DQN backbone. Why not plain DQN: offline, nothing corrects an
action value the data never contradicts, and max-based targets feed on exactly those
over-estimates; the CQL term ``logsumexp_a Q(s, a) - Q(s, a_data)`` pushes down the values of
actions the behaviour policy did not take, so the greedy policy stays where the data can vouch
for it. On this data (a controller drowned in 60% random actions, so both actions appear in
every visited state) plain double DQN (``--cql-alpha 0``) does learn, reaching the full 500
around steps 3,000-5,000, then falls back towards the behaviour level (about 100 at 10,000
steps on 4 of 5 seeds) as its values drift; with ``--cql-alpha 0.5`` all 5 seeds end at
470-500 (README, "Training offline", has the figures).

Resuming: every ``--checkpoint-every`` steps the script writes a checkpoint (networks, optimizer,
step) to ``--run-dir`` *first*, then commits the store, which saves the priority index and the
sampler's state (bit generator, step) together. Killed at any moment (even with SIGKILL), the
store comes back at its last commit and the checkpoint of that step exists (the last two are
kept), so running the same command again continues with exactly the batches an uninterrupted
run would have drawn. ``examples/resume.py`` demonstrates it.

The store's priority index belongs to one training run at a time: a run started in an empty
``--run-dir`` resets every priority to 1 and the sampler to its seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

import replaystore as rs

SAMPLER_NAME = "offline_dqn"
EVAL_SEED = 10_000  # evaluation episode i resets the environment with seed EVAL_SEED + i


@dataclass(frozen=True)
class Config:
    """Hyperparameters; a resumed run must use the same ones as the run it continues."""

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 5e-4
    gamma: float = 0.99
    hidden: int = 128
    cql_alpha: float = 0.5
    target_every: int = 500
    alpha: float = 0.6
    beta_start: float = 0.4
    seed: int = 0


class QNetwork(nn.Module):
    """A small MLP from an observation to one value per action."""

    def __init__(self, obs_dim: int, actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class Agent:
    """Online and target networks, the optimizer and the loss."""

    def __init__(self, obs_dim: int, actions: int, config: Config) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.q = QNetwork(obs_dim, actions, config.hidden)
        self.target = QNetwork(obs_dim, actions, config.hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.lr)

    def train_step(self, data: dict[str, np.ndarray], weights: np.ndarray,
                   step: int) -> tuple[np.ndarray, dict[str, float]]:
        """One gradient step on a batch; returns ``|TD error|`` per row and loss figures."""
        cfg = self.config
        obs = torch.from_numpy(np.asarray(data["obs"], np.float32))
        next_obs = torch.from_numpy(np.asarray(data["next_obs"], np.float32))
        action = torch.from_numpy(np.asarray(data["action"], np.int64).reshape(-1))
        reward = torch.from_numpy(np.asarray(data["reward"], np.float32))
        # Only a *terminated* step stops bootstrapping; a truncated one (the 500-step limit)
        # bootstraps from its next_obs like any other step.
        alive = torch.from_numpy(~np.asarray(data["terminated"], bool)).float()
        w = torch.from_numpy(np.asarray(weights, np.float32))

        with torch.no_grad():
            best = self.q(next_obs).argmax(1, keepdim=True)  # double DQN: online net picks
            next_value = self.target(next_obs).gather(1, best).squeeze(1)  # target evaluates
            target = reward + cfg.gamma * alive * next_value
        values = self.q(obs)
        taken = values.gather(1, action[:, None]).squeeze(1)
        td = taken - target
        # Importance weights correct the bias of prioritized sampling.
        td_loss = (w * nn.functional.smooth_l1_loss(taken, target, reduction="none")).mean()
        cql = (torch.logsumexp(values, 1) - taken).mean()
        loss = td_loss + cfg.cql_alpha * cql
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), 10.0)
        self.optimizer.step()
        if step % cfg.target_every == 0:
            self.target.load_state_dict(self.q.state_dict())
        return (td.detach().abs().numpy().astype(np.float64),
                {"td": td_loss.item(), "cql": cql.item(), "q": taken.mean().item()})

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations."""
        with torch.no_grad():
            return self.q(torch.from_numpy(np.asarray(obs, np.float32))).argmax(1).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])


# -- checkpoints ------------------------------------------------------------------------------


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"ckpt-{step:08d}.pt"


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """The run's checkpoints by step."""
    found = {}
    for path in run_dir.glob("ckpt-*.pt"):
        try:
            found[int(path.stem.split("-")[1])] = path
        except ValueError:
            continue
    return found


def save_checkpoint(run_dir: Path, step: int, agent: Agent, config: Config,
                    store: rs.Store) -> None:
    """Write the checkpoint of ``step`` durably (temporary file, fsync, rename), keep two.

    Called just before ``store.commit()``; the checkpoint records the commit number that
    commit will get, so a resume can tell whether anything else committed to the store since.
    """
    path = checkpoint_path(run_dir, step)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        torch.save({"step": step, "config": asdict(config), "store": str(store.path),
                    "commit_seq": store.manifest.commit_seq + 1,
                    "agent": agent.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # The store may still be at the previous checkpoint's commit (a kill before the commit
    # that follows this): keep that one too.
    for old in sorted(checkpoints(run_dir))[:-2]:
        checkpoints(run_dir)[old].unlink(missing_ok=True)


# -- evaluation -------------------------------------------------------------------------------


def evaluate(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
             seed: int = EVAL_SEED) -> np.ndarray:
    """Returns of ``episodes`` episodes run side by side, episode ``i`` reset with ``seed + i``."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(episodes)
    running = np.ones(episodes, bool)
    while running.any():
        live = np.flatnonzero(running)
        actions = act(obs[live])
        for i, action in zip(live, actions, strict=True):
            obs[i], reward, terminated, truncated, _ = envs[i].step(int(action))
            returns[i] += reward
            running[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns


# -- training ---------------------------------------------------------------------------------


def batch_digest(batch: rs.Batch) -> str:
    """A fingerprint of a batch: its slots, probabilities and weights, bit for bit."""
    h = hashlib.sha256(batch.indices.tobytes())
    h.update(batch.probabilities.tobytes())
    h.update(batch.weights.tobytes())
    return h.hexdigest()[:32]


def open_run(store: rs.Store, run_dir: Path, config: Config,
             agent: Agent) -> tuple[rs.PrioritizedSampler, int]:
    """The sampler, with the agent restored: resumed from the store's last commit and the
    matching checkpoint, or (no checkpoint in ``run_dir``) started afresh."""
    sampler = rs.PrioritizedSampler(store, alpha=config.alpha,
                                    beta=rs.Linear(config.beta_start, 1.0, config.steps),
                                    seed=config.seed, name=SAMPLER_NAME)
    saved = checkpoints(run_dir)
    if set(saved) <= {0}:
        # A new run (or one killed before its first commit): uniform priorities, the sampler
        # at its seed, and a first commit so that a kill from here on resumes this run.
        slots = store.slots()
        sampler.update_priorities(slots, np.ones(len(slots)))
        sampler.load_state_dict({**sampler.state_dict(), "steps": 0,
                                 "bit_generator": np.random.PCG64(config.seed).state})
        save_checkpoint(run_dir, 0, agent, config, store)
        store.commit()
        return sampler, 0
    step = sampler.steps
    if step not in saved:
        sys.exit(f"error: the store's sampler {SAMPLER_NAME!r} is at step {step}, but "
                 f"{run_dir} holds checkpoints of steps {sorted(saved)}: another run has used "
                 "the store's priority index since; start again in an empty --run-dir")
    state = torch.load(saved[step], weights_only=True)
    if state["commit_seq"] != store.manifest.commit_seq:
        sys.exit(f"error: store {str(store.path)!r} was committed to after step {step}'s checkpoint "
                 f"(commit #{store.manifest.commit_seq}, the checkpoint expects "
                 f"#{state['commit_seq']}): another run, new rows or a prune changed it, so this "
                 "run cannot continue exactly; start again in an empty --run-dir")
    if state["config"] != asdict(config):
        changed = {k: (v, asdict(config)[k]) for k, v in state["config"].items()
                   if asdict(config).get(k) != v}
        sys.exit(f"error: {run_dir} was trained with other settings {changed} "
                 "(checkpoint, now); resume with the same ones")
    agent.load_state_dict(state["agent"])
    return sampler, step


def train(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The trainer owns the store's priority index: open it for writing. Auto-commits would
    # save the sampler between our checkpoints, so keep them out of reach.
    store = rs.open(args.store, "a", commit_every_rows=1 << 40, commit_every_seconds=1e9)
    episodes = store.episodes
    behaviour = float(episodes["return"].mean()) if len(episodes) else float("nan")
    obs_dim = int(np.prod(store.schema["obs"].shape))
    agent = Agent(obs_dim, 2, config)
    sampler, first = open_run(store, run_dir, config, agent)
    print(f"store {args.store}: {len(store):,} transitions, {len(episodes):,} episodes, "
          f"behaviour policy's mean return {behaviour:.1f}")
    print("resuming at step" if first else "training from step", first, "of", config.steps,
          f"(seed {config.seed}, {torch.get_num_threads()} threads)", flush=True)
    log: TextIO | None = open(args.batch_log, "a") if args.batch_log else None  # noqa: SIM115
    fields = ["obs", "action", "reward", "next_obs", "terminated"]
    figures: dict[str, float] = {}
    last_print = time.perf_counter()
    step = first
    while step < config.steps:
        batch = sampler.sample(config.batch_size)
        step = sampler.steps
        if log is not None:
            log.write(f"{step} {batch_digest(batch)}\n")
            log.flush()
        data = store.get(batch.indices, fields)
        td, figures = agent.train_step(data, batch.weights, step)
        sampler.update_priorities(batch.indices, td)
        if step % args.checkpoint_every == 0 or step == config.steps:
            # Checkpoint first, then commit: the store never gets ahead of the checkpoints.
            save_checkpoint(run_dir, step, agent, config, store)
            store.commit()
        if args.eval_every and step % args.eval_every == 0:
            returns = evaluate(agent.act, args.env, args.eval_progress_episodes)
            elapsed = time.perf_counter() - started
            print(f"step {step:>6}  td {figures['td']:.3f}  cql {figures['cql']:.3f}  "
                  f"Q {figures['q']:6.1f}  greedy return {returns.mean():6.1f}  "
                  f"({step / max(elapsed, 1e-9):.0f} steps/s)", flush=True)
            last_print = time.perf_counter()
        elif time.perf_counter() - last_print > 10:
            print(f"step {step:>6}  td {figures['td']:.3f}  cql {figures['cql']:.3f}", flush=True)
            last_print = time.perf_counter()
    if log is not None:
        log.close()
    train_seconds = time.perf_counter() - started
    store.close()
    returns = evaluate(agent.act, args.env, args.eval_episodes)
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                      for p in agent.q.parameters())).hexdigest()[:16]
    result = {"seed": config.seed, "steps": config.steps, "behaviour_return": behaviour,
              "greedy_return_mean": float(returns.mean()),
              "greedy_return_std": float(returns.std()),
              "greedy_return_min": float(returns.min()), "eval_episodes": len(returns),
              "train_seconds": round(train_seconds, 1), "weights_sha256": weights}
    print(f"final greedy evaluation over {len(returns)} episodes: mean return "
          f"{returns.mean():.1f} ± {returns.std():.1f} (min {returns.min():.0f}), behaviour "
          f"policy {behaviour:.1f}; trained {config.steps - first} steps in "
          f"{train_seconds:.0f} s")
    print(f"weights sha256 {weights}")
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("store", help="a store recorded by `replaystore record` (obs, action, ...)")
    p.add_argument("--run-dir", default="runs/dqn", help="checkpoints and result.json")
    p.add_argument("--env", default="CartPole-v1", help="environment for evaluation only")
    p.add_argument("--steps", type=int, default=defaults.steps, help="gradient steps in all")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--gamma", type=float, default=defaults.gamma)
    p.add_argument("--hidden", type=int, default=defaults.hidden)
    p.add_argument("--cql-alpha", type=float, default=defaults.cql_alpha,
                   help="weight of the conservative penalty (0: plain double DQN)")
    p.add_argument("--target-every", type=int, default=defaults.target_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="steps between checkpoint + store commit")
    p.add_argument("--eval-every", type=int, default=1000,
                   help="steps between progress evaluations (0: none)")
    p.add_argument("--eval-progress-episodes", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=20, help="final evaluation episodes")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 suits this small MLP: see main())")
    p.add_argument("--batch-log", help="append 'STEP DIGEST' for every batch to this file")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds: 300 steps, tiny evaluations (for the tests)")
    if "--smoke" in (sys.argv[1:] if argv is None else argv):  # explicit options still win
        p.set_defaults(steps=300, checkpoint_every=100, eval_every=150,
                       eval_progress_episodes=2, eval_episodes=2)
    args = p.parse_args(argv)
    config = Config(steps=args.steps, batch_size=args.batch_size, lr=args.lr, gamma=args.gamma,
                    hidden=args.hidden, cql_alpha=args.cql_alpha,
                    target_every=args.target_every, seed=args.seed)
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)
    # One thread: a 256-row batch through a 128-wide MLP is too little work to split, and on a
    # 2-core machine a second OpenMP thread spin-waits against whatever else runs there
    # (measured: 400 steps/s with 2 threads on an idle machine, 10 steps/s with a busy other
    # core, 220 steps/s with 1 thread on the same busy machine). A fixed thread count also keeps
    # the arithmetic, so the priorities and the batches, identical from run to run.
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    train(args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
