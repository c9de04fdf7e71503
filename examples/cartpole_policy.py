"""A mixed-quality behaviour policy for CartPole-v1: a good linear controller, mostly ignored.

    replaystore record CartPole-v1 runs/cartpole --steps 50000 \\
        --policy examples/cartpole_policy.py:policy --seed 0

At each step, with probability ``1 - EPSILON`` (0.4) the action comes from a linear
controller that balances the pole indefinitely on its own (return 500), and otherwise it is
uniformly random. The noise makes the data *mixed*: episodes range from ~20 steps to the full
500 (about 100 on average; 10th/50th/90th percentiles ~21/83/194), and both actions are taken
in every region of the state space the policy visits, which is what an offline learner needs
to find out that the controller's action is the better one.

The function follows ``replaystore record``'s policy contract: a batch of observations
``(num_envs, 4)`` and a ``numpy.random.Generator`` in, a batch of actions ``(num_envs,)`` out.
"""

from __future__ import annotations

import numpy as np

EPSILON = 0.6
#: Weights of (cart position, cart velocity, pole angle, pole angular velocity).
GAINS = np.array([0.05, 0.1, 1.0, 0.5])


def controller(observations: np.ndarray) -> np.ndarray:
    """The noiseless linear controller: push right (1) when the weighted state is positive."""
    return (np.asarray(observations, dtype=np.float64) @ GAINS > 0).astype(np.int64)


def policy(observations: np.ndarray, rng: np.random.Generator,
           epsilon: float = EPSILON) -> np.ndarray:
    """Epsilon-noisy controller: each env's action is random with probability ``epsilon``."""
    observations = np.asarray(observations)
    actions = controller(observations)
    noisy = rng.random(len(actions)) < epsilon
    actions[noisy] = rng.integers(0, 2, int(noisy.sum()))
    return actions


def good_policy(observations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The controller alone (return 500): for comparison, or to record expert data."""
    return controller(observations)
