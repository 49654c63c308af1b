#!/usr/bin/env python3
"""A number-guessing game served to kaizen: the `guesser` has `max_guesses` tries to find a
number in [1, max_number]; after each guess the environment says "Too low." or "Too high.".
Reward 1 on the turn that finds it. The expert plays binary search.

Params: max_number (100), max_guesses (7), fail_on_seed (raise in reset for that seed: how
kaizen's tests show that a failing remote episode ends alone).

    python python/examples/guessing_game.py --port 8000
"""
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaizen_env import Env, assistant, done, request, serve, user  # noqa: E402
from kaizen_env.server import command_line  # noqa: E402


class GuessingGame(Env):
    name = "guessing_game"
    description = "guess a number from higher/lower hints"

    def reset(self, seed, params):
        self.max_number = int(params.get("max_number", 100))
        self.max_guesses = int(params.get("max_guesses", 7))
        if params.get("fail_on_seed") == seed:
            raise RuntimeError(f"failing on purpose for seed {seed}")
        self.secret = random.Random(seed).randint(1, self.max_number)
        self.low, self.high = 1, self.max_number
        self.guesses = 0
        self.messages = [user(
            f"I am thinking of a number between 1 and {self.max_number}. "
            f"You have {self.max_guesses} guesses. Reply with a number."
        )]
        return request("guesser", self.messages)

    def step(self, agent, text):
        if agent != "guesser":
            raise ValueError(f"only `guesser` plays, not {agent!r}")
        self.guesses += 1
        self.messages.append(assistant(text))
        numbers = re.findall(r"-?\d+", text)
        guess = int(numbers[-1]) if numbers else None
        if guess == self.secret:
            rewards = [0.0] * (self.guesses - 1) + [1.0]
            return done({"guesser": rewards}, {"solved": 1, "guesses": self.guesses}, {"secret": self.secret})
        if guess is None:
            feedback = "Please reply with a number."
        elif guess < self.secret:
            feedback = "Too low."
            self.low = max(self.low, guess + 1)
        else:
            feedback = "Too high."
            self.high = min(self.high, guess - 1)
        if self.guesses >= self.max_guesses:
            return done({"guesser": [0.0] * self.guesses}, {"solved": 0, "guesses": self.guesses}, {"secret": self.secret})
        self.messages.append(user(feedback))
        return request("guesser", self.messages)

    def expert(self):
        return str((self.low + self.high) // 2)

    def hint(self):
        return f"The number is {self.secret}."


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    serve(GuessingGame, args.host, args.port)
