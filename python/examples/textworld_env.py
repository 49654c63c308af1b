#!/usr/bin/env python3
"""Microsoft TextWorld games served to kaizen (needs `pip install textworld==1.7.0`).

Each seed generates a game offline (`tw-make custom` settings: world_size rooms, nb_objects,
quest_length), compiled once and cached under `cache_dir` (default: $KAIZEN_CACHE/textworld or
~/.cache/kaizen/textworld). The `player` gets the objective and each observation, optionally
with TextWorld's admissible commands; rewards are score increases divided by the game's
maximum score. The expert answer is the next command of TextWorld's walkthrough.

    python python/examples/textworld_env.py --port 8000

Params (kaizen's `params` table): world_size (5), nb_objects (10), quest_length (5),
max_steps (50), admissible_commands (true), cache_dir.
"""
import os
import re
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import textworld  # noqa: E402

from kaizen_env import Env, assistant, done, request, serve, user  # noqa: E402
from kaizen_env.server import command_line  # noqa: E402

_compile_lock = threading.Lock()
INFOS = textworld.EnvInfos(
    admissible_commands=True, policy_commands=True, max_score=True, won=True, lost=True,
    objective=True, score=True, moves=True,
)


def game_file(seed, world_size, nb_objects, quest_length, cache_dir):
    """The compiled game for these settings, generated on first use."""
    path = Path(cache_dir) / f"tw-w{world_size}-o{nb_objects}-q{quest_length}-s{seed}.z8"
    with _compile_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            options = textworld.GameOptions()
            options.seeds = seed
            options.nb_rooms = world_size
            options.nb_objects = nb_objects
            options.quest_length = quest_length
            options.path = str(path)
            options.force_recompile = True
            textworld.generator.compile_game(textworld.generator.make_game(options), options)
    return str(path)


def clean(feedback):
    """The feedback without TextWorld's banner, prompt lines and runs of blank lines."""
    start = feedback.find("-= ")
    text = feedback[start:] if start >= 0 and "$$" in feedback[:start] else feedback
    lines = [line.rstrip() for line in text.splitlines() if not line.lstrip().startswith(">")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class TextWorldEnv(Env):
    name = "textworld"
    description = "Microsoft TextWorld games generated from the seed"

    def reset(self, seed, params):
        default_cache = Path(os.environ.get("KAIZEN_CACHE", Path.home() / ".cache" / "kaizen")) / "textworld"
        path = game_file(
            seed,
            int(params.get("world_size", 5)),
            int(params.get("nb_objects", 10)),
            int(params.get("quest_length", 5)),
            params.get("cache_dir", default_cache),
        )
        self.max_steps = int(params.get("max_steps", 50))
        self.show_admissible = bool(params.get("admissible_commands", True))
        self.env = textworld.start(path, request_infos=INFOS)
        self.state = self.env.reset()
        self.score = 0
        self.rewards = []
        self.messages = [user(self.observation(
            f"Your objective: {self.state.objective.strip()}\n\n{clean(self.state.feedback)}"
        ))]
        return request("player", self.messages)

    def observation(self, text):
        if self.show_admissible:
            return f"{text}\n\nAdmissible commands: {', '.join(self.state.admissible_commands)}"
        return text

    def step(self, agent, text):
        command = text.strip().splitlines()[-1].strip() if text.strip() else "look"
        self.state, score, finished = self.env.step(command)
        self.rewards.append((score - self.score) / max(self.state.max_score, 1))
        self.score = score
        if finished or len(self.rewards) >= self.max_steps:
            self.env.close()
            metrics = {"won": int(bool(self.state.won)), "score": score, "moves": len(self.rewards)}
            return done({"player": self.rewards}, metrics, {"max_score": self.state.max_score})
        self.messages += [assistant(text), user(self.observation(clean(self.state.feedback)))]
        return request("player", self.messages)

    def expert(self):
        commands = self.state.policy_commands or []
        return commands[0] if commands else None


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    serve(TextWorldEnv, args.host, args.port)
