"""``replaystore record``: run a policy in a Gymnasium environment and store the transitions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from .output import emit_json
from .params import FieldCodec

FIELDS = ("obs", "action", "next_obs", "reward", "terminated", "truncated")


class RecordedFieldCodec(FieldCodec):
    """``FIELD=SPEC`` for one of the fields a recording writes, e.g. ``obs=zstd:3/rows``."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, str]:
        name, codec = super().convert(value, param, ctx)
        if name not in FIELDS:
            self.fail(f"{value!r}: FIELD must be one of {', '.join(FIELDS)}", param, ctx)
        return name, codec


class ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, printed every 10 s else."""

    def __init__(self, env_id: str, path: str, enabled: bool) -> None:
        self.label = f"{env_id} -> {path}"
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.1 if self.tty else 10.0
        self.last = 0.0 if self.tty else time.monotonic()
        self.width = 0

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        if p.target_steps is not None:
            done = f"{p.steps:,}/{p.target_steps:,} steps ({p.steps / max(p.target_steps, 1):.0%})"
            if p.steps_per_second > 0:
                left = (p.target_steps - p.steps) / p.steps_per_second
                done += f", {left // 60:.0f}m{left % 60:02.0f}s left"
        else:
            done = f"{p.steps:,} steps"
        eps = f"{p.episodes:,}" + (f"/{p.target_episodes:,}" if p.target_episodes else "")
        mean = p.mean_return
        text = (f"{self.label}  {done}  {p.steps_per_second:,.0f} steps/s  {eps} episodes"
                + (f"  mean return {mean:.2f} (last {len(p.recent_returns)})"
                   if mean is not None else ""))
        if self.tty:
            click.echo("\r" + text.ljust(self.width), nl=False, err=True)
            self.width = len(text)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            click.echo(err=True)


@click.command(short_help="Record transitions from a Gymnasium environment.", epilog="""\b
Examples:
  replaystore record CartPole-v1 runs/cartpole --steps 50000 --seed 0
  replaystore record CartPole-v1 runs/cartpole --episodes 200 --num-envs 8 \\
      --policy examples/cartpole_policy.py:policy
  replaystore record CartPole-v1 runs/cartpole --steps 50000 --append --seed 1
  replaystore record LunarLander-v3 runs/lander --steps 1000000 --capacity 200000 \\
      --policy mypkg.agents:act --codec obs=zstd:3

\b
Policy contract (--policy MODULE:CALLABLE or FILE.py:CALLABLE):
  def act(observations: np.ndarray,    # (num_envs, *obs_shape)
          rng: np.random.Generator     # seeded from --seed
          ) -> np.ndarray:             # (num_envs, *action_shape) actions
\b
Stored fields: obs, action, next_obs (kept only at episode ends and
otherwise read from the next row's obs), reward, terminated, truncated.""")
@click.argument("env_id")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=0), metavar="N",
              help="Record exactly N transitions; episodes still running at the end are "
                   "stored cut short (last step truncated=True).")
@click.option("--episodes", type=click.IntRange(min=0), metavar="N",
              help="Record until N episodes have finished (unfinished ones are dropped).")
@click.option("--policy", default="random", show_default=True, metavar="random|MODULE:FN",
              help="'random', an importable 'pkg.module:fn' or a file 'path/to/file.py:fn' "
                   "(see the contract below).")
@click.option("--num-envs", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="K", help="Environments stepped together (a synchronous vector env); "
                                "each one's episodes are stored whole, one after another.")
@click.option("--seed", type=int, metavar="S",
              help="Seed of the environments (copy i gets S+i), the random policy and the "
                   "policy's rng. Use a new seed with --append, or the same episodes recur.")
@click.option("--append", is_flag=True,
              help="Continue the store at PATH (also after a crash; created if missing). "
                   "Its fields must match the environment.")
@click.option("--capacity", type=click.IntRange(min=1), metavar="N",
              help="Ring size of a new store: the oldest rows are overwritten past N.")
@click.option("--codec", "codecs", type=RecordedFieldCodec(), multiple=True,
              help="Codec of a field of a new store, e.g. obs=zstd:3 or obs=lz4hc:5/rows "
                   "(repeatable).")
@click.option("--commit-every", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Commit (between episodes) at least this often; a crash loses at most this.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def record(env_id: str, path: Path, steps: int | None, episodes: int | None, policy: str,
           num_envs: int, seed: int | None, append: bool, capacity: int | None,
           codecs: tuple[tuple[str, str], ...], commit_every: float, quiet: bool,
           as_json: bool) -> None:
    """Record transitions of ENV_ID (a Gymnasium id) into the store at PATH.

    Shows steps/s, finished episodes and the mean return of the last 100 episodes on stderr.
    Ctrl-C or SIGTERM stops recording: episodes in progress are stored cut short (their last
    step marked truncated=True), everything is committed and the command exits 0 with a
    summary (a second Ctrl-C aborts at once, keeping the last commit). Commits happen only
    between episodes, so after a crash or SIGKILL the store holds whole episodes and
    --append continues it.
    """
    from replaystore import recording

    if (steps is None) == (episodes is None):
        raise click.UsageError("give exactly one of --steps N and --episodes N")
    if not append and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise click.BadParameter(f"{str(path)!r} exists; pass --append to add to the store "
                                 "there, or choose a new path", param_hint="PATH")
    try:
        recording.check_env_id(env_id)
    except recording.EnvNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="ENV_ID") from None
    try:
        fn = recording.load_policy(policy)
    except recording.PolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None

    line = ProgressLine(env_id, str(path), enabled=not quiet)
    with recording.stop_on_signals() as stop:
        try:
            result = recording.record(
                path, env_id, steps=steps, episodes=episodes, policy=fn, num_envs=num_envs,
                seed=seed, append=append, capacity=capacity, codecs=dict(codecs),
                commit_every_seconds=commit_every, stop=stop, progress=line)
        finally:
            line.close()
    if as_json:
        emit_json({**result.to_dict(), "policy": policy})
        return
    reasons = {"steps": f"--steps {steps} reached", "episodes": f"--episodes {episodes} reached"}
    reason = reasons.get(result.stop_reason, f"stopped by {result.stop_reason}")
    mean = f", mean return {result.mean_return:.2f}" if result.mean_return is not None else ""
    cut = (f"; {result.partial_episodes} cut short, stored with truncated=True"
           if result.partial_episodes else "")
    click.echo(f"recorded {result.rows:,} steps: {result.episodes:,} finished episodes{mean}"
               f"{cut}")
    click.echo(f"          in {result.seconds:.1f} s ({result.steps_per_second:,.0f} steps/s, "
               f"{result.num_envs} env{'s' if result.num_envs > 1 else ''}); {reason}")
    click.echo(f"store     {result.path}: {result.rows_in_store:,} rows, "
               f"{result.episodes_in_store:,} episodes"
               + (" (appended)" if result.appended else " (new)"))
